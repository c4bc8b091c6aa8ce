//! The assembler every emit closure writes into: dynasm's labels and relocations over one byte
//! buffer that a `Jit` reuses from one emission to the next.
//!
//! # Reuse
//! An emission [rebases](Assembler::rebase) the assembler to the address the code will run at
//! (which empties it), runs the emit closure on it, [commits](Assembler::commit) (resolves the
//! relocations against the base and returns the bytes), and leaves it, buffer and label tables
//! grown, for the next emission (`emitter.rs` caches it per `Jit`). Nothing is allocated once
//! they have grown to the largest code emitted: dynasmrt's `VecAssembler`, which this
//! replaces, fixes its base address when it is created, so it had to be created, and its
//! buffer and label tables allocated and freed, for every trampoline (about 260 of 1460
//! instructions per retire under callgrind: `benches/retire_path.rs`).
//!
//! # Relocations
//! Like `VecAssembler`, `extern` references (absolute targets) are patched as they are
//! emitted, against the base address; label references are patched at [`commit`]. So the
//! base must be the final address before the closure runs, which `Trampoline::emit`
//! guarantees (a second pass runs at the final slot when the first guessed wrong).
//!
//! [`commit`]: Assembler::commit

use dynasmrt::components::{LabelRegistry, PatchLoc, RelocRegistry, StaticLabel};
use dynasmrt::{
    AssemblyOffset, DynamicLabel, DynasmApi, DynasmError, DynasmLabelApi, LabelKind, TargetKind,
};

use crate::arch::Relocation;

/// The assembler handed to [`Jit::custom`](crate::Jit::custom) closures.
///
/// Write into it with `dynasm!` (it implements [`DynasmApi`] and [`DynasmLabelApi`] for the
/// architecture's relocations) or with `extend` (raw bytes). Its base address is the address
/// the code will run at, so relocations resolve to their final values. Local, global and
/// dynamic labels work as in dynasmrt's `VecAssembler`; [`new_dynamic_label`] creates a
/// dynamic one.
///
/// [`new_dynamic_label`]: Assembler::new_dynamic_label
#[derive(Debug)]
pub struct Assembler {
    ops: Vec<u8>,
    base: usize,
    labels: LabelRegistry,
    relocs: RelocRegistry<Relocation>,
    /// The first error a label or relocation hit while emitting, reported by `commit`.
    error: Option<DynasmError>,
    /// Whether a label was created or defined, or a label reference recorded, since the last
    /// rebase. Most trampolines do none of these, and then rebasing and committing skip the
    /// label and relocation tables (33 of an emission's 570 instructions under callgrind:
    /// `benches/retire_path.rs`).
    labelled: bool,
}

impl Assembler {
    /// An empty assembler whose code will run at `base`.
    pub(crate) fn new(base: usize) -> Self {
        Assembler {
            ops: Vec::new(),
            base,
            labels: LabelRegistry::new(),
            relocs: RelocRegistry::new(),
            error: None,
            labelled: false,
        }
    }

    /// The capacity of the code buffer it keeps.
    pub(crate) fn buffer_capacity(&self) -> usize {
        self.ops.capacity()
    }

    /// Empties the assembler (keeping its allocations) for code that will run at `base`.
    pub(crate) fn rebase(&mut self, base: usize) {
        self.ops.clear();
        self.base = base;
        if std::mem::take(&mut self.labelled) {
            self.labels.clear();
            // Left over only when a commit failed before resolving everything.
            self.relocs.take_statics().for_each(drop);
            self.relocs.take_dynamics().for_each(drop);
        }
        self.error = None;
    }

    /// Creates a dynamic label, to be defined with `=>label` and referenced from anywhere in
    /// the code.
    pub fn new_dynamic_label(&mut self) -> DynamicLabel {
        self.labelled = true;
        self.labels.new_dynamic_label()
    }

    /// Resolves every label reference against the base address; fails with the first error
    /// an emission hit (an undefined or doubly defined label, a target out of a relocation's
    /// range). [`code`](Self::code) is complete after it succeeded.
    pub(crate) fn commit(&mut self) -> Result<(), DynasmError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if !self.labelled {
            return Ok(());
        }
        for (loc, label) in self.relocs.take_statics() {
            let target = self.labels.resolve_static(&label)?;
            if loc
                .patch(&mut self.ops[loc.range(0)], self.base, target.0)
                .is_err()
            {
                return Err(DynasmError::ImpossibleRelocation(if label.is_global() {
                    TargetKind::Global(label.get_name())
                } else {
                    TargetKind::Local(label.get_name())
                }));
            }
        }
        for (loc, id) in self.relocs.take_dynamics() {
            let target = self.labels.resolve_dynamic(id)?;
            if loc
                .patch(&mut self.ops[loc.range(0)], self.base, target.0)
                .is_err()
            {
                return Err(DynasmError::ImpossibleRelocation(TargetKind::Dynamic(id)));
            }
        }
        Ok(())
    }

    /// The bytes emitted so far.
    pub(crate) fn code(&self) -> &[u8] {
        &self.ops
    }

    /// Records `error` unless an earlier one is recorded (the first one is reported).
    fn fail(&mut self, error: DynasmError) {
        self.error.get_or_insert(error);
    }
}

impl Extend<u8> for Assembler {
    fn extend<T: IntoIterator<Item = u8>>(&mut self, iter: T) {
        self.ops.extend(iter)
    }
}

impl<'a> Extend<&'a u8> for Assembler {
    fn extend<T: IntoIterator<Item = &'a u8>>(&mut self, iter: T) {
        self.ops.extend(iter)
    }
}

impl DynasmApi for Assembler {
    fn offset(&self) -> AssemblyOffset {
        AssemblyOffset(self.ops.len())
    }

    fn push(&mut self, byte: u8) {
        self.ops.push(byte);
    }

    fn align(&mut self, alignment: usize, with: u8) {
        let misalignment = self.ops.len() % alignment;
        if misalignment != 0 {
            let pad = alignment - misalignment;
            self.ops.resize(self.ops.len() + pad, with);
        }
    }
}

impl DynasmLabelApi for Assembler {
    type Relocation = Relocation;

    fn local_label(&mut self, name: &'static str) {
        self.labelled = true;
        let offset = self.offset();
        self.labels.define_local(name, offset);
    }

    fn global_label(&mut self, name: &'static str) {
        self.labelled = true;
        let offset = self.offset();
        if let Err(e) = self.labels.define_global(name, offset) {
            self.fail(e);
        }
    }

    fn dynamic_label(&mut self, id: DynamicLabel) {
        self.labelled = true;
        let offset = self.offset();
        if let Err(e) = self.labels.define_dynamic(id, offset) {
            self.fail(e);
        }
    }

    fn global_relocation(
        &mut self,
        name: &'static str,
        target_offset: isize,
        field_offset: u8,
        ref_offset: u8,
        kind: Relocation,
    ) {
        self.labelled = true;
        let loc = PatchLoc::new(self.offset(), target_offset, field_offset, ref_offset, kind);
        self.relocs.add_static(StaticLabel::global(name), loc);
    }

    fn dynamic_relocation(
        &mut self,
        id: DynamicLabel,
        target_offset: isize,
        field_offset: u8,
        ref_offset: u8,
        kind: Relocation,
    ) {
        self.labelled = true;
        let loc = PatchLoc::new(self.offset(), target_offset, field_offset, ref_offset, kind);
        self.relocs.add_dynamic(id, loc);
    }

    fn forward_relocation(
        &mut self,
        name: &'static str,
        target_offset: isize,
        field_offset: u8,
        ref_offset: u8,
        kind: Relocation,
    ) {
        self.labelled = true;
        let label = match self.labels.place_local_reference(name) {
            Some(label) => label.next(),
            None => StaticLabel::first(name),
        };
        let loc = PatchLoc::new(self.offset(), target_offset, field_offset, ref_offset, kind);
        self.relocs.add_static(label, loc);
    }

    fn backward_relocation(
        &mut self,
        name: &'static str,
        target_offset: isize,
        field_offset: u8,
        ref_offset: u8,
        kind: Relocation,
    ) {
        self.labelled = true;
        let Some(label) = self.labels.place_local_reference(name) else {
            self.fail(DynasmError::UnknownLabel(LabelKind::Local(name)));
            return;
        };
        let loc = PatchLoc::new(self.offset(), target_offset, field_offset, ref_offset, kind);
        self.relocs.add_static(label, loc);
    }

    fn value_relocation(
        &mut self,
        value: usize,
        field_offset: u8,
        ref_offset: u8,
        kind: Relocation,
    ) {
        let loc = PatchLoc::new(self.offset(), 0, field_offset, ref_offset, kind);
        let range = loc.range(0);
        if loc.patch(&mut self.ops[range], self.base, value).is_err() {
            self.fail(DynasmError::ImpossibleRelocation(TargetKind::Value(value)));
        }
    }
}

#[cfg(test)]
mod tests {
    use dynasmrt::dynasm;

    use super::*;

    /// An emission that fails must leave nothing behind for the next one: its error, its
    /// labels and the relocations its failed commit did not resolve.
    #[test]
    fn a_rebased_assembler_keeps_nothing_of_a_failed_emission() {
        let mut ops = Assembler::new(0x1000);
        dynasm!(ops
            ; .arch x64
            ; jmp ->twice
            ; ->twice:
            ; ->twice:
            ; jmp ->twice
            ; ret
        );
        assert!(matches!(ops.commit(), Err(DynasmError::DuplicateLabel(_))));
        ops.rebase(0x2000);
        dynasm!(ops
            ; .arch x64
            ; ->twice:
            ; ret
        );
        ops.commit().expect("a clean emission after the failed one");
        assert_eq!(ops.code(), [0xC3]);
    }

    /// Label-free code skips the label tables (`labelled`): what a failed labelled emission
    /// left must still be cleared before it, and labels used after it must still resolve or
    /// fail.
    #[test]
    fn label_free_emissions_between_labelled_ones_commit_clean() {
        let mut ops = Assembler::new(0x1000);
        dynasm!(ops
            ; .arch x64
            ; jmp >missing
        );
        assert!(ops.commit().is_err());
        ops.rebase(0x2000);
        dynasm!(ops
            ; .arch x64
            ; ret
        );
        ops.commit()
            .expect("nothing of the failed emission is left");
        assert_eq!(ops.code(), [0xC3]);
        ops.rebase(0x3000);
        dynasm!(ops
            ; .arch x64
            ; jmp >missing
        );
        assert!(
            ops.commit().is_err(),
            "a reference after label-free code is resolved"
        );
        ops.rebase(0x4000);
        dynasm!(ops
            ; .arch x64
            ; jmp >done
            ; done:
            ; ret
        );
        ops.commit().unwrap();
        assert_eq!(ops.code(), [0xE9, 0, 0, 0, 0, 0xC3]);
    }

    #[test]
    fn labels_resolve_against_the_new_base_after_a_rebase() {
        let mut ops = Assembler::new(0x1000);
        for base in [0x1000usize, 0x8000] {
            ops.rebase(base);
            dynasm!(ops
                ; .arch x64
                ; jmp >done
                ; nop
                ; done:
                ; ret
            );
            ops.commit().unwrap();
            // A short jump over the nop, whatever the base.
            assert_eq!(ops.code(), [0xE9, 1, 0, 0, 0, 0x90, 0xC3], "at {base:#x}");
        }
        ops.rebase(0x1000);
        dynasm!(ops
            ; .arch x64
            ; jmp >missing
        );
        assert!(ops.commit().is_err());
    }
}
