//! Naming JIT code for profilers: the perf map and the jitdump file (both opt-in, per
//! [`JitBuilder`](crate::JitBuilder)).
//!
//! `perf` sees JIT code as anonymous addresses inside a (deleted) memfd mapping. Two standard
//! ways tell it what is there, and a `Jit` can write either or both whenever it emits code:
//!
//! - **perf map** (`/tmp/perf-<pid>.map`, one `START SIZE name` line per code object, hex):
//!   read by `perf report` directly. It has no notion of time, so when a reclaimed slot is
//!   reused the old and the new line overlap and `perf` may pick either name.
//! - **jitdump** (`<dir>/jit-<pid>.dump`, the format of the Linux tree's
//!   `tools/perf/Documentation/jitdump-specification.txt`): a header, then one timestamped
//!   `JIT_CODE_LOAD` record per code object with its address, size, name and bytes. The file is
//!   also mapped executable once, which is how `perf record` notices it; `perf inject --jit`
//!   then writes one ELF image per record and names every sample by the record that was
//!   current at its time, so reused slots are named correctly. Timestamps are
//!   `CLOCK_MONOTONIC`: record with `perf record -k mono`.
//!
//! Names are `tramway:<kind>#<id>`: `code` for trampolines (forwarding trampolines, custom
//! code, probe dispatchers) with the trampoline's [`id`](crate::Trampoline::id), `site` for a
//! patch site's stub. Both files are per process and shared by every `Jit` that asks for them;
//! each record is written with one `write(2)` to a file opened `O_APPEND`, so concurrent
//! emitters never interleave. Nothing is written for code that is freed (neither format has an
//! unload record perf uses).

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::error::JitError;

/// What a `Jit` writes for profilers (see the module docs).
#[derive(Clone, Debug, Default)]
pub(crate) struct ProfilingConfig {
    pub(crate) perf_map: bool,
    pub(crate) jitdump_dir: Option<PathBuf>,
}

/// The files one `Jit` writes to.
#[derive(Debug, Default)]
pub(crate) struct Profiling {
    perf_map: Option<&'static Mutex<File>>,
    jitdump: Option<&'static JitDump>,
}

static PERF_MAP: OnceLock<Result<Mutex<File>, String>> = OnceLock::new();
static JITDUMP: OnceLock<Result<JitDump, String>> = OnceLock::new();

impl Profiling {
    /// Opens (once per process) the files `cfg` asks for.
    pub(crate) fn open(cfg: &ProfilingConfig) -> Result<Profiling, JitError> {
        let fail = |what: &str, e: &String| JitError::Os {
            op: "open a profiling file",
            source: std::io::Error::other(format!("{what}: {e}")),
        };
        let perf_map = match cfg.perf_map {
            false => None,
            true => match PERF_MAP.get_or_init(|| open_perf_map().map(Mutex::new)) {
                Ok(f) => Some(f),
                Err(e) => return Err(fail("perf map", e)),
            },
        };
        let jitdump = match &cfg.jitdump_dir {
            None => None,
            Some(dir) => match JITDUMP.get_or_init(|| JitDump::create(dir)) {
                Ok(d) => Some(d),
                Err(e) => return Err(fail("jitdump", e)),
            },
        };
        Ok(Profiling { perf_map, jitdump })
    }

    /// Whether anything is written (the emit paths skip the naming work otherwise).
    #[inline]
    pub(crate) fn enabled(&self) -> bool {
        self.perf_map.is_some() || self.jitdump.is_some()
    }

    /// Records that `code` now lives at `addr` under `kind` and `id` (see the module docs).
    #[inline]
    pub(crate) fn code_loaded(&self, kind: &str, id: u64, addr: usize, code: &[u8]) {
        if self.enabled() {
            self.write_code_loaded(kind, id, addr, code);
        }
    }

    #[cold]
    fn write_code_loaded(&self, kind: &str, id: u64, addr: usize, code: &[u8]) {
        let name = format!("tramway:{kind}#{id}");
        if let Some(map) = self.perf_map {
            let line = format!("{addr:x} {:x} {name}\n", code.len());
            // One write per line to an O_APPEND file; a failed write loses a name, not code.
            let _ = crate::lock(map).write_all(line.as_bytes());
        }
        if let Some(dump) = self.jitdump {
            dump.code_load(&name, addr, code);
        }
    }
}

/// The path of this process's perf map.
pub(crate) fn perf_map_path() -> PathBuf {
    PathBuf::from(format!("/tmp/perf-{}.map", std::process::id()))
}

fn open_perf_map() -> Result<File, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(perf_map_path())
        .map_err(|e| e.to_string())
}

/// The jitdump file of this process.
#[derive(Debug)]
struct JitDump {
    /// The file, and the `code_index` of the next record (unique per process).
    file: Mutex<(File, u64)>,
}

/// `JiTD` in the file's byte order (the reader detects the order from it).
const JITDUMP_MAGIC: u32 = 0x4A69_5444;
const JITDUMP_VERSION: u32 = 1;
const JITDUMP_HEADER_SIZE: u32 = 40;
const JIT_CODE_LOAD: u32 = 0;
/// `EM_X86_64`.
const ELF_MACHINE: u32 = 62;

/// The path of this process's jitdump file in `dir`.
pub(crate) fn jitdump_path(dir: &Path) -> PathBuf {
    dir.join(format!("jit-{}.dump", std::process::id()))
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

impl JitDump {
    fn create(dir: &Path) -> Result<JitDump, String> {
        let path = jitdump_path(dir);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let mut header = Vec::with_capacity(JITDUMP_HEADER_SIZE as usize);
        header.extend_from_slice(&JITDUMP_MAGIC.to_ne_bytes());
        header.extend_from_slice(&JITDUMP_VERSION.to_ne_bytes());
        header.extend_from_slice(&JITDUMP_HEADER_SIZE.to_ne_bytes());
        header.extend_from_slice(&ELF_MACHINE.to_ne_bytes());
        header.extend_from_slice(&0u32.to_ne_bytes()); // pad1
        header.extend_from_slice(&std::process::id().to_ne_bytes());
        header.extend_from_slice(&monotonic_ns().to_ne_bytes());
        header.extend_from_slice(&0u64.to_ne_bytes()); // flags
        file.write_all(&header)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        // `perf record` learns of the file from an executable mapping of it (the marker); the
        // mapping is never used and stays for the life of the process.
        // SAFETY: maps one page of a file we own, read-only + exec, private; nothing reads
        // through it, and it is never unmapped (the process-wide dump lives as long).
        let marker = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE,
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
            )
        };
        if marker == libc::MAP_FAILED {
            return Err(format!(
                "mapping {} for perf: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        // Records are appended from now on.
        drop(file);
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(JitDump {
            file: Mutex::new((file, 0)),
        })
    }

    fn code_load(&self, name: &str, addr: usize, code: &[u8]) {
        // Under the lock from the timestamp to the write: records stay in timestamp order.
        let mut guard = crate::lock(&self.file);
        let (file, next_index) = &mut *guard;
        let index = *next_index;
        *next_index += 1;
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        let total = 16 + 4 + 4 + 8 * 4 + name.len() + 1 + code.len();
        let mut rec = Vec::with_capacity(total);
        rec.extend_from_slice(&JIT_CODE_LOAD.to_ne_bytes());
        rec.extend_from_slice(&(total as u32).to_ne_bytes());
        rec.extend_from_slice(&monotonic_ns().to_ne_bytes());
        rec.extend_from_slice(&std::process::id().to_ne_bytes());
        rec.extend_from_slice(&tid.to_ne_bytes());
        rec.extend_from_slice(&(addr as u64).to_ne_bytes()); // vma
        rec.extend_from_slice(&(addr as u64).to_ne_bytes()); // code_addr
        rec.extend_from_slice(&(code.len() as u64).to_ne_bytes());
        rec.extend_from_slice(&index.to_ne_bytes());
        rec.extend_from_slice(name.as_bytes());
        rec.push(0);
        rec.extend_from_slice(code);
        debug_assert_eq!(rec.len(), total);
        // One write per record to an O_APPEND file: records never interleave.
        let _ = file.write_all(&rec);
    }
}
