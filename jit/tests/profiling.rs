//! JIT code named for profilers: the jitdump file's records match what was emitted (address,
//! size, bytes; a reused slot gets a newer record), the perf map lists every code object, and
//! `Jit::contains` tells JIT addresses from others.

use std::collections::HashMap;
use std::path::PathBuf;

use tramway_jit::dynasmrt::{dynasm, DynasmApi};
use tramway_jit::{ForwardingSpec, Jit, SiteKind, Target, Trampoline};

/// One `JIT_CODE_LOAD` record.
#[derive(Debug, Clone)]
struct Load {
    timestamp: u64,
    code_addr: u64,
    code_size: u64,
    code_index: u64,
    name: String,
    code: Vec<u8>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().unwrap())
}

/// Parses a jitdump file (header, then records), checking the header.
fn parse_jitdump(bytes: &[u8]) -> Vec<Load> {
    assert_eq!(u32_at(bytes, 0), 0x4A69_5444, "magic");
    assert_eq!(u32_at(bytes, 4), 1, "version");
    let header = u32_at(bytes, 8) as usize;
    assert_eq!(header, 40);
    assert_eq!(u32_at(bytes, 12), 62, "EM_X86_64");
    assert_eq!(u32_at(bytes, 20), std::process::id(), "pid");
    let mut loads = Vec::new();
    let mut at = header;
    while at + 16 <= bytes.len() {
        let (id, total) = (u32_at(bytes, at), u32_at(bytes, at + 4) as usize);
        assert!(
            total >= 16 && at + total <= bytes.len(),
            "record size {total}"
        );
        if id == 0 {
            let r = &bytes[at..at + total];
            assert_eq!(u32_at(r, 16), std::process::id());
            let (vma, code_addr) = (u64_at(r, 24), u64_at(r, 32));
            assert_eq!(vma, code_addr);
            let code_size = u64_at(r, 40);
            let name_at = 56;
            let nul = r[name_at..].iter().position(|&c| c == 0).expect("name");
            let name = String::from_utf8(r[name_at..name_at + nul].to_vec()).unwrap();
            let code = r[name_at + nul + 1..].to_vec();
            assert_eq!(code.len() as u64, code_size, "{name}: bytes vs size");
            loads.push(Load {
                timestamp: u64_at(r, 8),
                code_addr,
                code_size,
                code_index: u64_at(r, 48),
                name,
                code,
            });
        }
        at += total;
    }
    assert_eq!(at, bytes.len(), "trailing bytes");
    loads
}

fn constant(jit: &Jit, v: i32) -> Trampoline {
    // SAFETY: `mov eax, v; ret`, never yields.
    unsafe { jit.custom(|ops| dynasm!(ops ; .arch x64 ; mov eax, v ; ret)) }.unwrap()
}

/// The bytes at `t`'s address (the RX view is readable).
fn bytes_of(t: &Trampoline) -> Vec<u8> {
    // SAFETY: the trampoline's code is mapped and readable while the handle lives.
    unsafe { std::slice::from_raw_parts(t.addr(), t.len()) }.to_vec()
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tramway-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn every_emitted_code_object_has_a_jitdump_record_and_a_perf_map_line() {
    let dir = scratch_dir("jitdump");
    let jit = Jit::builder().jitdump(&dir).perf_map(true).build().unwrap();
    let a = constant(&jit, 1);
    let fwd = jit
        .forwarding(ForwardingSpec::new(Target::Trampoline(a.clone())).counted())
        .unwrap();
    let site = jit.site(SiteKind::Indirect, &fwd).unwrap();
    // A slot freed (never reachable, so at once) and reused by a later emission: the next
    // one that takes slots from the chunk's free list, after the emitter's run of slots.
    let gone = constant(&jit, 2);
    let (gone_addr, gone_bytes) = (gone.addr() as u64, bytes_of(&gone));
    drop(gone);
    let mut held = Vec::new();
    let reused = loop {
        let next = constant(&jit, 3);
        if next.addr() as u64 == gone_addr {
            break next;
        }
        assert!(held.len() < 64, "the allocator never reused the freed slot");
        held.push(next);
    };
    drop(held);

    let loads = parse_jitdump(&std::fs::read(Jit::jitdump_path(&dir)).unwrap());
    let latest_at = |addr: u64| -> Load {
        loads
            .iter()
            .filter(|l| l.code_addr == addr)
            .max_by_key(|l| l.timestamp)
            .cloned()
            .unwrap_or_else(|| panic!("no record at {addr:#x}: {loads:#?}"))
    };
    for t in [&a, &fwd, &reused] {
        let l = latest_at(t.addr() as u64);
        assert_eq!(l.code_size, t.len() as u64);
        assert_eq!(l.code, bytes_of(t), "{}", l.name);
        assert_eq!(l.name, format!("tramway:code#{}", t.id()));
    }
    // The reused slot has both records; the newer one names the current code.
    let at_reused: Vec<&Load> = loads.iter().filter(|l| l.code_addr == gone_addr).collect();
    assert_eq!(at_reused.len(), 2, "{at_reused:#?}");
    assert!(at_reused.iter().any(|l| l.code == gone_bytes));
    let stub = latest_at(site.entry() as u64);
    assert!(stub.name.starts_with("tramway:site#"), "{}", stub.name);
    // code_index is unique, timestamps never go backwards.
    let mut indices: Vec<u64> = loads.iter().map(|l| l.code_index).collect();
    indices.sort_unstable();
    indices.dedup();
    assert_eq!(indices.len(), loads.len());
    assert!(loads.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));

    // The perf map: `START SIZE name` (hex) for each.
    let map = std::fs::read_to_string(Jit::perf_map_path()).unwrap();
    let lines: HashMap<String, (u64, u64)> = map
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ' ');
            let start = u64::from_str_radix(f.next()?, 16).ok()?;
            let size = u64::from_str_radix(f.next()?, 16).ok()?;
            Some((f.next()?.to_string(), (start, size)))
        })
        .collect();
    for t in [&a, &fwd, &reused] {
        assert_eq!(
            lines.get(&format!("tramway:code#{}", t.id())),
            Some(&(t.addr() as u64, t.len() as u64)),
            "{map}"
        );
    }
    drop((site, fwd, a, reused, jit));
    let _ = std::fs::remove_dir_all(&dir);
    // Only this test of this binary writes the map.
    let _ = std::fs::remove_file(Jit::perf_map_path());
}

#[test]
fn contains_tells_jit_code_from_other_addresses() {
    let jit = Jit::new().unwrap();
    let t = constant(&jit, 7);
    assert!(jit.contains(t.addr() as usize));
    assert!(jit.contains(t.addr() as usize + t.len() - 1));
    assert!(!jit.contains(contains_tells_jit_code_from_other_addresses as *const () as usize));
    assert!(!jit.contains(0));
    assert!(!jit.contains(usize::MAX));
    let other = Jit::new().unwrap();
    assert!(!other.contains(t.addr() as usize));
}
