//! Code memory as the process sees it in /proc/self/maps: never `rwx`, unmapped when freed.

use std::sync::Arc;

use tramway_jit::{ForwardingSpec, ImmediateReclaim, Jit, SiteKind, Target};

/// One line of /proc/self/maps.
struct Mapping {
    start: usize,
    end: usize,
    perms: String,
    path: String,
}

fn maps() -> Vec<Mapping> {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .map(|l| {
            let mut f = l.split_whitespace();
            let (range, perms) = (f.next().unwrap(), f.next().unwrap().to_string());
            let path = f.nth(3).unwrap_or("").to_string();
            let (s, e) = range.split_once('-').unwrap();
            Mapping {
                start: usize::from_str_radix(s, 16).unwrap(),
                end: usize::from_str_radix(e, 16).unwrap(),
                perms,
                path,
            }
        })
        .collect()
}

fn assert_no_rwx() {
    for m in maps() {
        assert!(
            !(m.perms.contains('w') && m.perms.contains('x')),
            "writable and executable mapping {:#x}-{:#x} {} {}",
            m.start,
            m.end,
            m.perms,
            m.path
        );
    }
}

fn mapping_at(addr: usize) -> Mapping {
    maps()
        .into_iter()
        .find(|m| m.start <= addr && addr < m.end)
        .expect("address is mapped")
}

fn memfd_mappings(name: &str) -> usize {
    let needle = format!("/memfd:{name} ");
    maps()
        .iter()
        .filter(|m| format!("{} ", m.path).starts_with(&needle))
        .count()
}

extern "C" fn seven() -> u64 {
    7
}

#[test]
fn no_mapping_is_ever_writable_and_executable() {
    for fallback in [false, true] {
        let jit = Jit::builder().force_fallback(fallback).build().unwrap();
        assert_eq!(jit.is_fallback(), fallback);
        let site = jit
            .site(SiteKind::Indirect, &jit.constant_return(0).unwrap())
            .unwrap();
        assert_no_rwx();
        for i in 0..300u64 {
            let t = if i % 2 == 0 {
                jit.constant_return(i).unwrap()
            } else {
                jit.forwarding(ForwardingSpec::new(Target::Address(seven as *const u8)))
                    .unwrap()
            };
            drop(site.swap(&t).unwrap());
            if i % 50 == 0 {
                assert_no_rwx();
            }
        }
        // SAFETY: the last installed trampoline forwards to `seven`.
        let f: extern "C" fn() -> u64 = unsafe { site.as_fn() };
        assert_eq!(f(), 7);
        let rx = mapping_at(site.entry() as usize);
        assert_eq!(
            &rx.perms[..3],
            "r-x",
            "code runs from a read-execute mapping"
        );
        jit.barrier();
        assert_no_rwx();
    }
}

#[test]
fn code_runs_from_a_shared_memfd_view() {
    let jit = Jit::new().unwrap();
    let t = jit.constant_return(1).unwrap();
    let m = mapping_at(t.addr() as usize);
    assert_eq!(m.perms, "r-xs");
    assert!(
        m.path
            .starts_with(&format!("/memfd:{}", jit.memfd_name().unwrap())),
        "{}",
        m.path
    );
    let (base, len) = jit.code_range();
    assert!(base <= t.addr() as usize && (t.addr() as usize) < base + len);
}

#[test]
fn dropping_the_jit_unmaps_the_memfd_and_returns_mapped_bytes_to_zero() {
    let jit = Jit::new().unwrap();
    let name = jit.memfd_name().unwrap();
    let stats = jit.stats_handle();
    let site = jit
        .site(SiteKind::Direct, &jit.constant_return(1).unwrap())
        .unwrap();
    let retired = site.swap(&jit.constant_return(2).unwrap()).unwrap();
    let unused = jit.constant_return(3).unwrap();
    assert!(memfd_mappings(&name) >= 2, "RX and RW views are mapped");
    assert!(stats.get().mapped_bytes > 0);
    drop((site, retired, unused));
    drop(jit);
    let s = stats.get();
    assert_eq!((s.mapped_bytes, s.chunks), (0, 0), "{s:?}");
    assert_eq!((s.live, s.retired, s.reclaimed), (0, 0, 3), "{s:?}");
    assert_eq!(memfd_mappings(&name), 0, "no view of the memfd remains");
}

#[test]
fn last_freed_slot_unmaps_its_chunk() {
    let page = 4096;
    // No decay: an empty chunk beyond the fixed spares is unmapped at once.
    let jit = Jit::builder()
        .chunk_size(4 * page)
        .spare_chunk_decay(std::time::Duration::ZERO)
        .build()
        .unwrap();
    let name = jit.memfd_name().unwrap();
    // A chunk-sized object has a chunk to itself, so freeing it empties that chunk.
    // SAFETY: the body is `mov rax, 5; ret` padded with int3; it is only called as `fn() -> u64`.
    let big_code = || unsafe {
        jit.custom(|ops| {
            ops.extend([0x48, 0xB8, 5, 0, 0, 0, 0, 0, 0, 0, 0xC3]);
            ops.extend(std::iter::repeat_n(0xCC, 4 * page - 11));
        })
    };
    // A class keeps the chunks it emptied last as its spares: these empty after `big`'s, so
    // that `big`'s is the oldest empty chunk and unmapped.
    let newer: Vec<_> = (0..tramway_jit::SPARE_CHUNKS_PER_CLASS)
        .map(|_| big_code().unwrap())
        .collect();
    let big = big_code().unwrap();
    let small = jit.constant_return(6).unwrap();
    let site = jit.site(SiteKind::Indirect, &big).unwrap();
    // SAFETY: both trampolines implement `fn() -> u64`.
    let f: extern "C" fn() -> u64 = unsafe { site.as_fn() };
    assert_eq!(f(), 5);
    let addr = big.addr() as usize;
    assert!(mapping_at(addr).path.contains(&name));
    let chunks = jit.stats().chunks;
    let retired = site.swap(&small).unwrap();
    drop(big);
    assert!(
        mapping_at(addr).path.contains(&name),
        "retired code stays mapped until reclaimed"
    );
    // SAFETY: no other thread calls the site.
    unsafe { retired.reclaim_now() };
    drop(newer);
    let m = mapping_at(addr);
    assert_eq!(
        m.perms, "---p",
        "the chunk is replaced by an inaccessible reservation"
    );
    assert!(!m.path.contains("memfd"), "{}", m.path);
    assert_eq!(jit.stats().chunks, chunks - 1);
    assert_eq!(f(), 6);
}

#[test]
fn immediate_reclaim_frees_retired_code_at_once_as_traps() {
    // SAFETY: only this thread calls the site, and never while swapping.
    let reclaimer = Arc::new(unsafe { ImmediateReclaim::new_unchecked() });
    let jit = Jit::builder().reclaimer(reclaimer).build().unwrap();
    let site = jit
        .site(SiteKind::Indirect, &jit.constant_return(1).unwrap())
        .unwrap();
    let old_addr = site.current().addr();
    drop(site.swap(&jit.constant_return(2).unwrap()).unwrap());
    let s = jit.stats();
    assert_eq!((s.retired, s.reclaimed), (0, 1), "{s:?}");
    // SAFETY: the chunk stays mapped (it holds the stub and the new trampoline); reading the RX view.
    let bytes = unsafe { std::slice::from_raw_parts(old_addr, 3) };
    assert_eq!(bytes, [0x0F, 0x0B, 0xCC], "ud2, then int3");
}
