//! x86-64 call-frame information for the bodies that call hooks: where the canonical frame
//! address (CFA) is at every instruction, recorded while the body is assembled, and its
//! encoding as DWARF CFA instructions (the `.eh_frame` framing and the registration are
//! portable: `unwind.rs`).
//!
//! # The rows
//! The CFA is the caller's `rsp` before its `call` (System V): at a body's first
//! instruction `CFA = rsp + 8` and the return address is at `CFA - 8` (the CIE's initial
//! instructions, [`CIE`]). The site stub reaches a body with a jump, so that return address
//! is the caller's. Both hook-calling bodies open with a frame record (`push rbp; mov rbp,
//! rsp`) and address the CFA through `rbp` for as long as it holds the frame, so a body has
//! exactly three rows after the CIE's:
//!
//! | after              | CFA        | `rbp`              |
//! |--------------------|------------|--------------------|
//! | (entry)            | `rsp + 8`  | the caller's       |
//! | `push rbp`         | `rsp + 16` | saved at `CFA - 16`|
//! | `mov rbp, rsp`     | `rbp + 16` | saved at `CFA - 16`|
//! | `pop rbp` / `leave`| `rsp + 8`  | the caller's again |
//!
//! The pushes, `sub rsp` and pops between the second and the third row move `rsp` but not
//! `rbp`, so the CFA rule does not change there: rows at every `rsp` change would describe
//! the same frame with more bytes. The rows are taken at `ops.offset()` right after the
//! instruction that changes the rule, so they hold at every instruction boundary, not only
//! at the calls: an asynchronous unwinder (a profiler's signal) may stop anywhere. A body's
//! offsets depend only on its shape (the lengths argument of `bodies.rs`), so the rows
//! recorded while assembling at the final address are also those of any other address.
//!
//! # Ordering
//! Rows are recorded in instruction order, and [`cfa_program`] encodes each as the difference
//! from the previous one (an advance, then the changed CFA register or offset, then the
//! changed `rbp` rule), which is exactly how an unwinder replays them up to a PC.

use crate::unwind::CieParams;

/// DWARF register numbers (System V x86-64 psABI, figure 3.36).
const DW_RBP: u8 = 6;
const DW_RSP: u8 = 7;
/// The return-address column.
const DW_RA: u8 = 16;

const DW_CFA_ADVANCE_LOC: u8 = 0x40;
const DW_CFA_OFFSET: u8 = 0x80;
const DW_CFA_RESTORE: u8 = 0xC0;
const DW_CFA_ADVANCE_LOC1: u8 = 0x02;
const DW_CFA_ADVANCE_LOC2: u8 = 0x03;
const DW_CFA_DEF_CFA: u8 = 0x0C;
const DW_CFA_DEF_CFA_REGISTER: u8 = 0x0D;
const DW_CFA_DEF_CFA_OFFSET: u8 = 0x0E;

/// The x86-64 CIE: code alignment 1, data alignment -8, return address in column 16, and at
/// entry `CFA = rsp + 8`, return address at `CFA - 8` (factored offset 1).
pub(crate) const CIE: CieParams = CieParams {
    code_align: 1,
    data_align: -8,
    ra_register: DW_RA,
    initial_instructions: &[DW_CFA_DEF_CFA, DW_RSP, 8, DW_CFA_OFFSET | DW_RA, 1],
};

/// The register the CFA is computed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Base {
    Rsp,
    Rbp,
}

/// The frame state from one instruction offset on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Row {
    at: usize,
    base: Base,
    /// CFA = base + offset.
    offset: u8,
    /// Whether the caller's `rbp` is saved at `CFA - 16` (otherwise `rbp` is the caller's).
    rbp_saved: bool,
}

/// The state at every body's first instruction (the CIE's initial instructions).
const ENTRY: Row = Row {
    at: 0,
    base: Base::Rsp,
    offset: 8,
    rbp_saved: false,
};

/// The most rows a body records (module docs: three).
const MAX_ROWS: usize = 3;

/// The rows of one body (module docs), recorded while it is assembled; no allocation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FrameRows {
    rows: [Row; MAX_ROWS],
    len: usize,
}

impl Default for FrameRows {
    fn default() -> Self {
        FrameRows {
            rows: [ENTRY; MAX_ROWS],
            len: 0,
        }
    }
}

impl FrameRows {
    fn push(&mut self, row: Row) {
        assert!(
            self.len < MAX_ROWS,
            "a body records at most {MAX_ROWS} rows"
        );
        debug_assert!(self.len == 0 || self.rows[self.len - 1].at < row.at);
        self.rows[self.len] = row;
        self.len += 1;
    }

    /// `push rbp` ended at offset `at`.
    pub(crate) fn pushed_rbp(&mut self, at: usize) {
        self.push(Row {
            at,
            base: Base::Rsp,
            offset: 16,
            rbp_saved: true,
        });
    }

    /// `mov rbp, rsp` (right after `push rbp`) ended at `at`: the CFA is `rbp + 16` from here.
    pub(crate) fn frame_pointer_set(&mut self, at: usize) {
        self.push(Row {
            at,
            base: Base::Rbp,
            offset: 16,
            rbp_saved: true,
        });
    }

    /// `pop rbp` or `leave` ended at `at`: back to the entry state.
    pub(crate) fn popped_rbp(&mut self, at: usize) {
        self.push(Row { at, ..ENTRY });
    }

    fn rows(&self) -> &[Row] {
        &self.rows[..self.len]
    }
}

/// The FDE instructions of `rows`: each row as the difference from the previous one
/// (module docs).
pub(crate) fn cfa_program(rows: &FrameRows) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 * MAX_ROWS);
    let mut prev = ENTRY;
    for row in rows.rows() {
        let delta = row.at - prev.at;
        match delta {
            0..=0x3F => out.push(DW_CFA_ADVANCE_LOC | delta as u8),
            0x40..=0xFF => out.extend([DW_CFA_ADVANCE_LOC1, delta as u8]),
            _ => {
                let d = u16::try_from(delta).expect("a body is smaller than 64 KiB");
                out.push(DW_CFA_ADVANCE_LOC2);
                out.extend(d.to_le_bytes());
            }
        }
        let reg = |b: Base| match b {
            Base::Rsp => DW_RSP,
            Base::Rbp => DW_RBP,
        };
        // Offsets are below 128, so each is a one-byte ULEB128.
        debug_assert!(row.offset < 0x80);
        match (row.base != prev.base, row.offset != prev.offset) {
            (true, true) => out.extend([DW_CFA_DEF_CFA, reg(row.base), row.offset]),
            (true, false) => out.extend([DW_CFA_DEF_CFA_REGISTER, reg(row.base)]),
            (false, true) => out.extend([DW_CFA_DEF_CFA_OFFSET, row.offset]),
            (false, false) => {}
        }
        match (prev.rbp_saved, row.rbp_saved) {
            // Saved at CFA - 16: factored offset 16 / 8 = 2.
            (false, true) => out.extend([DW_CFA_OFFSET | DW_RBP, 2]),
            (true, false) => out.push(DW_CFA_RESTORE | DW_RBP),
            _ => {}
        }
        prev = *row;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::bodies::emit_forwarding;
    use super::*;
    use crate::arch::{CallThrough, ForwardingBody};
    use crate::assembler::Assembler;

    /// The rule table a CFA program leaves at each offset: `(base register, offset, rbp
    /// saved)`, replaying the instructions `cfa_program` emits (a small DWARF interpreter).
    fn replay(program: &[u8], len: usize) -> Vec<(u8, u8, bool)> {
        let mut table = Vec::with_capacity(len);
        let (mut reg, mut off, mut rbp) = (DW_RSP, 8, false);
        let mut loc = 0usize;
        let mut i = 0;
        let advance = |to: usize, st: (u8, u8, bool), table: &mut Vec<(u8, u8, bool)>| {
            while table.len() < to.min(len) {
                table.push(st);
            }
        };
        while i < program.len() {
            let op = program[i];
            i += 1;
            match op {
                _ if op & 0xC0 == DW_CFA_ADVANCE_LOC => {
                    advance(loc + usize::from(op & 0x3F), (reg, off, rbp), &mut table);
                    loc += usize::from(op & 0x3F);
                }
                DW_CFA_ADVANCE_LOC1 => {
                    advance(loc + usize::from(program[i]), (reg, off, rbp), &mut table);
                    loc += usize::from(program[i]);
                    i += 1;
                }
                DW_CFA_ADVANCE_LOC2 => {
                    let d = usize::from(u16::from_le_bytes([program[i], program[i + 1]]));
                    advance(loc + d, (reg, off, rbp), &mut table);
                    loc += d;
                    i += 2;
                }
                DW_CFA_DEF_CFA => {
                    (reg, off) = (program[i], program[i + 1]);
                    i += 2;
                }
                DW_CFA_DEF_CFA_REGISTER => {
                    reg = program[i];
                    i += 1;
                }
                DW_CFA_DEF_CFA_OFFSET => {
                    off = program[i];
                    i += 1;
                }
                _ if op == DW_CFA_OFFSET | DW_RBP => {
                    assert_eq!(program[i], 2, "rbp saved at CFA - 16");
                    rbp = true;
                    i += 1;
                }
                _ if op == DW_CFA_RESTORE | DW_RBP => rbp = false,
                _ => panic!("unexpected CFA instruction {op:#x}"),
            }
        }
        advance(len, (reg, off, rbp), &mut table);
        table
    }

    fn body(counted: bool, hooked: bool, call_through: bool) -> ForwardingBody {
        ForwardingBody {
            counter: counted.then_some(0x5000),
            hook: hooked.then_some((0x6000, 0x7000)),
            call_through: call_through.then_some(CallThrough {
                exit_hook: (0x8000, 0x9000),
                enter: 0xA000,
                leave: 0xB000,
                stack_arg_bytes: 24,
            }),
            target: 0x2000,
        }
    }

    /// For every hook-calling shape: the table starts and ends at the entry rule, each change
    /// follows the instruction that makes it (checked against the bytes), and rbp is the CFA
    /// base exactly while the frame record is set up.
    #[test]
    fn rows_follow_the_instructions_that_change_the_frame() {
        for (counted, hooked, call_through) in [
            (false, true, false),
            (true, true, false),
            (false, false, true),
            (true, true, true),
        ] {
            let b = body(counted, hooked, call_through);
            let mut ops = Assembler::new(0x1000);
            let mut rows = FrameRows::default();
            emit_forwarding(&mut ops, &b, 0x1000, &mut rows);
            ops.commit().unwrap();
            let code = ops.code();
            let r = rows.rows();
            assert_eq!(r.len(), 3, "{counted} {hooked} {call_through}");
            assert_eq!(code[r[0].at - 1], 0x55, "push rbp");
            assert_eq!(
                code[r[1].at - 3..r[1].at],
                [0x48, 0x89, 0xE5],
                "mov rbp, rsp"
            );
            let pop = if call_through { 0xC9 } else { 0x5D }; // leave / pop rbp
            assert_eq!(code[r[2].at - 1], pop);
            assert_eq!(r[0].at, if counted { 14 + 1 } else { 1 });

            let table = replay(&cfa_program(&rows), code.len());
            assert_eq!(table.len(), code.len());
            for (pc, &(reg, off, rbp)) in table.iter().enumerate() {
                let want = if pc < r[0].at {
                    (DW_RSP, 8, false)
                } else if pc < r[1].at {
                    (DW_RSP, 16, true)
                } else if pc < r[2].at {
                    (DW_RBP, 16, true)
                } else {
                    (DW_RSP, 8, false)
                };
                assert_eq!((reg, off, rbp), want, "at offset {pc}");
            }
        }
    }

    #[test]
    fn long_advances_use_wider_encodings() {
        let mut rows = FrameRows::default();
        rows.pushed_rbp(1);
        rows.frame_pointer_set(0x50);
        rows.popped_rbp(0x50 + 0x200);
        let p = cfa_program(&rows);
        assert_eq!(
            p,
            [
                0x41,
                DW_CFA_DEF_CFA_OFFSET,
                16,
                DW_CFA_OFFSET | DW_RBP,
                2,
                DW_CFA_ADVANCE_LOC1,
                0x4F,
                DW_CFA_DEF_CFA_REGISTER,
                DW_RBP,
                DW_CFA_ADVANCE_LOC2,
                0x00,
                0x02,
                DW_CFA_DEF_CFA,
                DW_RSP,
                8,
                DW_CFA_RESTORE | DW_RBP,
            ]
        );
    }
}
