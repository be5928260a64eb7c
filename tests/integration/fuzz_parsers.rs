//! Deterministic mutation fuzzing of every input parser: small valid inputs (GGUF, safetensors,
//! Hugging Face folders, imatrix files, recipes) are damaged by seeded mutations (truncations,
//! bit flips, every length/count/type/dim/offset field set to hostile values, JSON values
//! swapped for hostile ones), and every parse must return `Ok` or `Err`:
//!
//! - never panic (each case runs under `catch_unwind`, a panic names the case);
//! - never take long (each case is timed);
//! - never allocate absurd memory: a counting allocator records the largest single allocation
//!   of each case, and refuses (aborting the run, after naming the case on stderr) any over
//!   [`HARD_LIMIT`].
//!
//! The default run takes a few seconds. `SMELT_FUZZ_CASES=N cargo test --test integration fuzz_parsers`
//! runs N random mutations per seed instead of the default few hundred (the structural
//! mutations always run in full); `SMELT_FUZZ_SEED` changes the random stream. To replay one
//! failure with its panic message and backtrace: `SMELT_FUZZ_ONLY='<case label>'
//! SMELT_FUZZ_VERBOSE=1` with the same seed and case count.

use smelt::fixture::TinyLlama;
use smelt::gguf::GgmlType;
use smelt::store::Store;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Allocation tracking

/// No parse of a few-kilobyte input has any business asking for this much in one allocation.
const HARD_LIMIT: usize = 1 << 30;
/// The largest single allocation a case may make, when no input size is given.
const SOFT_LIMIT: usize = 64 << 20;
/// Bytes a case may allocate at once per byte of input: dequantizing the densest ggml type
/// (IQ1_S, 50 bytes for 256 values) to f32 takes about 20.
const PER_INPUT_BYTE: usize = 24;
/// The longest a case may take.
const TIME_LIMIT: Duration = Duration::from_secs(5);

struct Tracking;

thread_local! {
    static BIGGEST: Cell<usize> = const { Cell::new(0) };
    static LABEL: RefCell<[u8; 256]> = const { RefCell::new([0; 256]) };
    static IN_CASE: Cell<bool> = const { Cell::new(false) };
}

fn note(size: usize) -> bool {
    let _ = BIGGEST.try_with(|b| {
        if size > b.get() {
            b.set(size)
        }
    });
    if size > HARD_LIMIT {
        // No allocation here: name the case from the fixed buffer, then refuse.
        let _ = LABEL.try_with(|l| {
            if let Ok(l) = l.try_borrow() {
                let n = l.iter().position(|&b| b == 0).unwrap_or(l.len());
                let mut e = std::io::stderr();
                let _ = e.write_all(b"\nrunaway allocation in fuzz case: ");
                let _ = e.write_all(&l[..n]);
                let _ = e.write_all(b"\n");
            }
        });
        return false;
    }
    true
}

// SAFETY: every call forwards to the system allocator unchanged; the only addition is
// bookkeeping in thread-locals (which do not allocate), and refusing oversized requests by
// returning null, which the `GlobalAlloc` contract allows.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if !note(l.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: same layout, forwarded.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if !note(l.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: same layout, forwarded.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if !note(new) {
            return std::ptr::null_mut();
        }
        // SAFETY: pointer and layout come from this allocator, which is the system one.
        unsafe { System.realloc(p, l, new) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: pointer and layout come from this allocator, which is the system one.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

// ---------------------------------------------------------------------------------------------
// The case runner

#[derive(Default)]
struct Report {
    cases: usize,
    ok: usize,
    failures: Vec<String>,
    /// Size of the input the next cases damage: their allocations are bounded by it.
    input_len: Option<usize>,
}

impl Report {
    /// Run `f` as one case: it must not panic, be slow or allocate too much. An `Err` must
    /// satisfy `check_err` (name the file, tensor or key).
    fn case<T>(
        &mut self,
        label: &str,
        f: impl FnOnce() -> Result<T, String>,
        check_err: impl Fn(&str) -> bool,
    ) {
        if let Ok(only) = std::env::var("SMELT_FUZZ_ONLY") {
            if !label.contains(&only) {
                return;
            }
        }
        self.cases += 1;
        LABEL.with(|l| {
            let mut l = l.borrow_mut();
            l.fill(0);
            let n = label.len().min(255);
            l[..n].copy_from_slice(&label.as_bytes()[..n]);
        });
        BIGGEST.with(|b| b.set(0));
        let t0 = Instant::now();
        IN_CASE.with(|c| c.set(true));
        let r = std::panic::catch_unwind(AssertUnwindSafe(f));
        IN_CASE.with(|c| c.set(false));
        let took = t0.elapsed();
        let biggest = BIGGEST.with(|b| b.get());
        match r {
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                self.failures.push(format!("{label}: PANIC {msg}"));
            }
            Ok(Ok(_)) => self.ok += 1,
            Ok(Err(e)) => {
                if !check_err(&e) {
                    self.failures
                        .push(format!("{label}: error names no file/tensor/key: {e}"));
                }
            }
        }
        if took > TIME_LIMIT {
            self.failures.push(format!("{label}: took {took:?}"));
        }
        let limit = self
            .input_len
            .map_or(SOFT_LIMIT, |n| PER_INPUT_BYTE * n + (256 << 10));
        if biggest > limit {
            self.failures.push(format!(
                "{label}: allocated {biggest} bytes at once (limit {limit})"
            ));
        }
    }

    fn finish(self, what: &str, min_cases: usize) {
        eprintln!(
            "{what}: {} cases, {} parsed fine, {} failures",
            self.cases,
            self.ok,
            self.failures.len()
        );
        let shown: Vec<_> = self.failures.iter().take(40).collect();
        assert!(
            self.failures.is_empty(),
            "{what}: {} of {} cases failed:\n{}",
            self.failures.len(),
            self.cases,
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
        if std::env::var_os("SMELT_FUZZ_ONLY").is_none() {
            assert!(self.cases >= min_cases, "{what}: only {} cases", self.cases);
        }
    }
}

// Panics inside a case are reported by `Report`; keep the default hook from printing each one.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_CASE.with(|c| c.get()) || std::env::var_os("SMELT_FUZZ_VERBOSE").is_some() {
                default(info)
            }
        }));
    });
}

/// splitmix64: a tiny deterministic generator (no dependency).
struct Rng(u64);

impl Rng {
    fn new(salt: u64) -> Rng {
        let seed: u64 = std::env::var("SMELT_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed);
        Rng(seed ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A scratch folder for the damaged files, in RAM where there is one (every case writes one),
/// else under target/ like every other test's scratch (never /tmp).
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn random_cases() -> usize {
    std::env::var("SMELT_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200)
}

/// `seed` with its `width`-byte little-endian integer field at `pos` set to each hostile
/// value of that width, with the value.
fn field_mutations(seed: &[u8], pos: usize, width: usize) -> Vec<(u64, Vec<u8>)> {
    let values: Vec<u64> = if width == 4 {
        interesting_u32().into_iter().map(u64::from).collect()
    } else {
        interesting_u64(seed.len() as u64, pos as u64)
    };
    values
        .into_iter()
        .map(|v| {
            let mut b = seed.to_vec();
            b[pos..pos + width].copy_from_slice(&v.to_le_bytes()[..width]);
            (v, b)
        })
        .collect()
}

/// Hostile values for a 64-bit length, count, dimension or offset.
fn interesting_u64(file_len: u64, pos: u64) -> Vec<u64> {
    let mut v = vec![
        0,
        1,
        2,
        3,
        4,
        5,
        7,
        8,
        9,
        31,
        32,
        33,
        255,
        256,
        4095,
        4096,
        i32::MAX as u64,
        u32::MAX as u64,
        1 << 32,
        1 << 40,
        1 << 62,
        1 << 63,
        u64::MAX,
        u64::MAX - 1,
        (-8i64) as u64,
        file_len,
        file_len + 1,
        file_len.saturating_sub(pos),
        file_len.saturating_sub(pos) + 1,
        file_len / 8,
        file_len / 4,
    ];
    v.dedup();
    v
}

/// Hostile values for a 32-bit type id or dimension count.
fn interesting_u32() -> Vec<u32> {
    let mut v: Vec<u32> = (0..=13).collect();
    v.extend([
        15,
        16,
        29,
        30,
        31,
        34,
        35,
        39,
        40,
        99,
        255,
        1 << 16,
        1 << 31,
        u32::MAX,
    ]);
    v
}

/// A random damage to `b`: bit flip, byte set, interesting integer written, truncation,
/// bytes inserted or removed.
fn mutate(rng: &mut Rng, b: &mut Vec<u8>, focus: usize) {
    let len = b.len();
    if len == 0 {
        b.push(rng.next() as u8);
        return;
    }
    // Most damage lands in the header, where the parser looks.
    let at = |rng: &mut Rng| {
        if rng.below(4) > 0 {
            rng.below(focus.min(len))
        } else {
            rng.below(len)
        }
    };
    for _ in 0..1 + rng.below(3) {
        let len = b.len();
        if len == 0 {
            return;
        }
        match rng.below(7) {
            0 => {
                let i = at(rng).min(len - 1);
                b[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = at(rng).min(len - 1);
                b[i] = *rng.pick(&[0u8, 0xff, 0x7f, 0x80, 1, b'"', b'{', b']', b'9']);
            }
            2 | 3 => {
                let i = at(rng).min(len.saturating_sub(8));
                let vals = interesting_u64(len as u64, i as u64);
                let v = rng.pick(&vals).to_le_bytes();
                let n = (len - i).min(8);
                b[i..i + n].copy_from_slice(&v[..n]);
            }
            4 => {
                let i = at(rng).min(len - 1);
                let v = rng.pick(&interesting_u32()).to_le_bytes();
                let n = (len - i).min(4);
                b[i..i + n].copy_from_slice(&v[..n]);
            }
            5 => b.truncate(at(rng)),
            _ => {
                let i = at(rng).min(len);
                if rng.below(2) == 0 {
                    let n = rng.below(16).min(len - i);
                    b.drain(i..i + n);
                } else {
                    let n = 1 + rng.below(16);
                    let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                    b.splice(i..i, bytes);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GGUF

/// Where each integer field of a GGUF header lies: (offset, width, what).
fn gguf_fields(b: &[u8]) -> (Vec<(usize, usize, String)>, usize) {
    let mut f = Vec::new();
    let mut p = 8usize;
    let u32_at = |p: usize| u32::from_le_bytes(b[p..p + 4].try_into().unwrap());
    let u64_at = |p: usize| u64::from_le_bytes(b[p..p + 8].try_into().unwrap());
    f.push((4, 4, "version".to_string()));
    f.push((8, 8, "tensor count".to_string()));
    f.push((16, 8, "kv count".to_string()));
    let n_t = u64_at(8) as usize;
    let n_kv = u64_at(16) as usize;
    p += 16;
    // Value walker: records fields of scalars' containers, strings and the first few array
    // elements.
    fn value(
        b: &[u8],
        p: &mut usize,
        ty: u32,
        f: &mut Vec<(usize, usize, String)>,
        what: &str,
        record: bool,
    ) {
        let u32_at = |p: usize| u32::from_le_bytes(b[p..p + 4].try_into().unwrap());
        let u64_at = |p: usize| u64::from_le_bytes(b[p..p + 8].try_into().unwrap());
        match ty {
            0 | 1 | 7 => *p += 1,
            2 | 3 => *p += 2,
            4..=6 => *p += 4,
            10..=12 => *p += 8,
            8 => {
                if record {
                    f.push((*p, 8, format!("{what} string length")));
                }
                *p += 8 + u64_at(*p) as usize;
            }
            9 => {
                let et = u32_at(*p);
                let n = u64_at(*p + 4) as usize;
                if record {
                    f.push((*p, 4, format!("{what} element type")));
                    f.push((*p + 4, 8, format!("{what} array length")));
                }
                *p += 12;
                for i in 0..n {
                    value(b, p, et, f, &format!("{what}[{i}]"), record && i < 2);
                }
            }
            _ => panic!("seed has unknown type {ty}"),
        }
    }
    for k in 0..n_kv {
        f.push((p, 8, format!("key {k} length")));
        let klen = u64_at(p) as usize;
        let key = String::from_utf8_lossy(&b[p + 8..p + 8 + klen]).into_owned();
        p += 8 + klen;
        f.push((p, 4, format!("`{key}` type")));
        let ty = u32_at(p);
        p += 4;
        value(b, &mut p, ty, &mut f, &format!("`{key}`"), true);
    }
    for t in 0..n_t {
        f.push((p, 8, format!("tensor {t} name length")));
        p += 8 + u64_at(p) as usize;
        f.push((p, 4, format!("tensor {t} n_dims")));
        let nd = u32_at(p) as usize;
        p += 4;
        for d in 0..nd {
            f.push((p, 8, format!("tensor {t} dim {d}")));
            p += 8;
        }
        f.push((p, 4, format!("tensor {t} type")));
        p += 4;
        f.push((p, 8, format!("tensor {t} offset")));
        p += 8;
    }
    (f, p)
}

/// A GGUF with every metadata type, nested arrays and a few tensors of assorted types.
fn gguf_all_types() -> Vec<u8> {
    fn s(b: &mut Vec<u8>, x: &str) {
        b.extend_from_slice(&(x.len() as u64).to_le_bytes());
        b.extend_from_slice(x.as_bytes());
    }
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    let tensors: &[(&str, &[u64], GgmlType)] = &[
        ("a.weight", &[32, 2], GgmlType::F32),
        ("b.weight", &[64], GgmlType::Q8_0),
        ("c.weight", &[256, 1, 1, 1], GgmlType::Q4_K),
        ("d.weight", &[8, 3], GgmlType::F16),
    ];
    b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    b.extend_from_slice(&16u64.to_le_bytes());
    s(&mut b, "general.architecture");
    b.extend_from_slice(&8u32.to_le_bytes());
    s(&mut b, "llama");
    let scalars: &[(&str, u32, &[u8])] = &[
        ("k.u8", 0, &[7]),
        ("k.i8", 1, &[0xfe]),
        ("k.u16", 2, &[1, 2]),
        ("k.i16", 3, &[1, 0x80]),
        ("k.u32", 4, &[1, 0, 0, 0]),
        ("k.i32", 5, &[0xff, 0xff, 0xff, 0xff]),
        ("k.f32", 6, &[0, 0, 0x80, 0x3f]),
        ("k.bool", 7, &[1]),
        ("k.u64", 10, &[1, 0, 0, 0, 0, 0, 0, 0]),
        ("k.i64", 11, &[0xff; 8]),
        ("k.f64", 12, &[0, 0, 0, 0, 0, 0, 0xf0, 0x3f]),
        ("general.alignment", 4, &[32, 0, 0, 0]),
    ];
    for (k, ty, v) in scalars {
        s(&mut b, k);
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(v);
    }
    // Array of strings.
    s(&mut b, "k.strings");
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&3u64.to_le_bytes());
    for x in ["a", "bc", ""] {
        s(&mut b, x);
    }
    // Array of arrays of u16.
    s(&mut b, "k.nested");
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&2u64.to_le_bytes());
    for n in [2u64, 1] {
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&n.to_le_bytes());
        for i in 0..n {
            b.extend_from_slice(&(i as u16).to_le_bytes());
        }
    }
    // Array of f32.
    s(&mut b, "k.floats");
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&6u32.to_le_bytes());
    b.extend_from_slice(&4u64.to_le_bytes());
    for i in 0..4 {
        b.extend_from_slice(&(i as f32).to_le_bytes());
    }
    let mut offset = 0u64;
    for (name, dims, ty) in tensors {
        s(&mut b, name);
        b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in *dims {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(&ty.id().to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
        let n: u64 = dims.iter().product();
        offset += ty.bytes_for(n).unwrap().div_ceil(32) * 32;
    }
    while b.len() % 32 != 0 {
        b.push(0);
    }
    let data_len = offset as usize;
    b.extend((0..data_len).map(|i| (i * 7 % 251) as u8 & 0x3f));
    b
}

fn tiny() -> TinyLlama {
    TinyLlama {
        n_layer: 1,
        hidden: 32,
        ff: 64,
        n_head: 2,
        n_head_kv: 1,
        vocab: 260,
        ..TinyLlama::default()
    }
}

/// Open a (possibly damaged) GGUF as a store and read every small tensor.
fn open_and_read(path: &Path) -> Result<(), String> {
    let s = Store::open(path).map_err(|e| e.to_string())?;
    for t in 0..s.tensors.len() {
        if s.tensors[t].n_elements() <= 1 << 20 {
            let _ = s.read_f32(t).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

fn names(path: &Path) -> impl Fn(&str) -> bool + '_ {
    move |e: &str| {
        let name = path.file_name().unwrap().to_string_lossy();
        e.contains(name.as_ref()) || e.contains("tensor `")
    }
}

fn fuzz_gguf_seed(seed: &[u8], tag: &str, salt: u64, r: &mut Report) {
    let dir = scratch();
    let path = dir.path().join(format!("{tag}.gguf"));
    let (fields, header_end) = gguf_fields(seed);
    r.input_len = Some(seed.len());
    // 1. Every integer field set to every hostile value (by default, the fields of the first
    // four tensors only: the others are alike).
    let full = std::env::var_os("SMELT_FUZZ_CASES").is_some();
    let first_tensors = |what: &String| {
        what.strip_prefix("tensor ")
            .and_then(|w| w.split(' ').next())
            .and_then(|i| i.parse::<usize>().ok())
            .is_none_or(|i| i < 4)
    };
    for (pos, width, what) in fields.iter().filter(|f| full || first_tensors(&f.2)) {
        for (v, b) in field_mutations(seed, *pos, *width) {
            std::fs::write(&path, &b).unwrap();
            r.case(
                &format!("{tag}: {what} @{pos} = {v}"),
                || open_and_read(&path),
                names(&path),
            );
        }
    }
    // 2. Truncated at every byte of the header, and a little into the data.
    let data_offset = header_end.div_ceil(32) * 32;
    // Every byte of a small header; every few bytes of a big one (runs stay short).
    let step = (data_offset / 1500).max(1);
    for cut in (0..(data_offset + 64).min(seed.len()))
        .step_by(step)
        .chain([seed.len() - 1])
    {
        std::fs::write(&path, &seed[..cut]).unwrap();
        r.case(
            &format!("{tag}: truncated at {cut}"),
            || open_and_read(&path),
            names(&path),
        );
    }
    // 3. Random damage.
    let mut rng = Rng::new(salt);
    for i in 0..random_cases() {
        let mut b = seed.to_vec();
        mutate(&mut rng, &mut b, data_offset);
        std::fs::write(&path, &b).unwrap();
        r.case(
            &format!("{tag}: random mutation {i} (salt {salt})"),
            || open_and_read(&path),
            names(&path),
        );
    }
}

#[test]
fn fuzz_gguf() {
    quiet_panics();
    let dir = scratch();
    let model = dir.path().join("tiny.gguf");
    tiny().write_gguf(&model).unwrap();
    let tiny_bytes = std::fs::read(&model).unwrap();
    let mut r = Report::default();
    let t0 = Instant::now();
    fuzz_gguf_seed(&gguf_all_types(), "types", 1, &mut r);
    eprintln!("types seed: {} cases in {:?}", r.cases, t0.elapsed());
    let t0 = Instant::now();
    fuzz_gguf_seed(&tiny_bytes, "tiny", 2, &mut r);
    eprintln!(
        "tiny seed ({} bytes): {} cases in {:?}",
        tiny_bytes.len(),
        r.cases,
        t0.elapsed()
    );
    r.finish("gguf", 5000);
}

// ---------------------------------------------------------------------------------------------
// safetensors

fn safetensors_seed() -> Vec<u8> {
    let dir = scratch();
    let p = dir.path().join("s.safetensors");
    let f32s: Vec<u8> = (0..8).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let f16s: Vec<u8> = (0..6u16).flat_map(|i| (i * 1000).to_le_bytes()).collect();
    let bf16s: Vec<u8> = (0..4u16).flat_map(|i| (0x3f80 + i).to_le_bytes()).collect();
    smelt::fixture::write_safetensors(
        &p,
        &[
            ("a".into(), GgmlType::F32, vec![2, 4], f32s),
            ("b".into(), GgmlType::F16, vec![6], f16s),
            ("c".into(), GgmlType::BF16, vec![2, 1, 2], bf16s),
        ],
    )
    .unwrap();
    std::fs::read(&p).unwrap()
}

fn open_store_and_read(path: &Path) -> Result<(), String> {
    let s = Store::open(path).map_err(|e| e.to_string())?;
    for t in 0..s.tensors.len() {
        if s.tensors[t].n_elements() <= 1 << 20 {
            let _ = s.read_f32(t).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Hostile JSON values for a number or list in a header or config.
fn hostile_json() -> Vec<serde_json::Value> {
    use serde_json::json;
    vec![
        json!(null),
        json!(0),
        json!(1),
        json!(-1),
        json!(1.5),
        json!(1e300),
        json!(-1e300),
        json!(u64::MAX),
        json!(1u64 << 63),
        json!(1u64 << 40),
        json!(1u64 << 32),
        json!(u32::MAX),
        json!(i64::MIN),
        json!("7"),
        json!(""),
        json!(true),
        json!([]),
        json!([0]),
        json!([u64::MAX]),
        json!([1u64 << 32, 1u64 << 32]),
        json!([1, 1, 1, 1, 1]),
        json!([2, -1]),
        json!([[1]]),
        json!({}),
        json!({"a": 1}),
    ]
}

/// Every leaf and container of `v` replaced, one at a time, by each hostile value.
fn json_variants(v: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    fn paths(v: &serde_json::Value, at: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if !at.is_empty() {
            out.push(at.clone());
        }
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    at.push(k.clone());
                    paths(x, at, out);
                    at.pop();
                }
            }
            serde_json::Value::Array(a) => {
                for (i, x) in a.iter().enumerate().take(3) {
                    at.push(i.to_string());
                    paths(x, at, out);
                    at.pop();
                }
            }
            _ => {}
        }
    }
    let mut all = Vec::new();
    paths(v, &mut Vec::new(), &mut all);
    let mut out = Vec::new();
    for p in all {
        for h in hostile_json() {
            let mut w = v.clone();
            let mut slot = &mut w;
            for k in &p {
                slot = match slot {
                    serde_json::Value::Object(m) => m.get_mut(k).unwrap(),
                    serde_json::Value::Array(a) => &mut a[k.parse::<usize>().unwrap()],
                    _ => unreachable!(),
                };
            }
            *slot = h.clone();
            out.push((format!("/{} = {h}", p.join("/")), w));
        }
    }
    out
}

/// A safetensors file with `header` as its JSON header and `data` after it.
fn safetensors_with(header: &serde_json::Value, data: &[u8]) -> Vec<u8> {
    let text = serde_json::to_string(header).unwrap();
    let mut b = (text.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(text.as_bytes());
    b.extend_from_slice(data);
    b
}

#[test]
fn fuzz_safetensors() {
    quiet_panics();
    let seed = safetensors_seed();
    let hlen = u64::from_le_bytes(seed[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&seed[8..8 + hlen]).unwrap();
    let data = seed[8 + hlen..].to_vec();
    let dir = scratch();
    let path = dir.path().join("fz.safetensors");
    let mut r = Report {
        input_len: Some(seed.len() + 64),
        ..Report::default()
    };
    // 1. Each header value replaced by hostile ones.
    for (what, h) in json_variants(&header) {
        std::fs::write(&path, safetensors_with(&h, &data)).unwrap();
        r.case(
            &format!("safetensors {what}"),
            || open_store_and_read(&path),
            names(&path),
        );
    }
    // Consistent-looking entries: zero-size tensors with huge other dimensions, overlaps,
    // empty and scalar shapes, more than four dimensions, unknown and non-float dtypes.
    use serde_json::json;
    let entry_variants = [
        json!({"dtype": "F32", "shape": [0, 1u64 << 62], "data_offsets": [0, 0]}),
        json!({"dtype": "F32", "shape": [1u64 << 62, 0], "data_offsets": [0, 0]}),
        json!({"dtype": "F16", "shape": [0, 0, 0, 0, 0], "data_offsets": [0, 0]}),
        json!({"dtype": "F32", "shape": [1, 1, 1, 1, 2], "data_offsets": [0, 8]}),
        json!({"dtype": "F32", "shape": [], "data_offsets": [0, 4]}),
        json!({"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}),
        json!({"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}),
        json!({"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}),
        json!({"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}),
        json!({"dtype": "Q4_0", "shape": [4], "data_offsets": [0, 4]}),
        json!({"dtype": "BF16", "shape": [1u64 << 32, 1u64 << 32], "data_offsets": [0, 0]}),
    ];
    for name in ["a", "b", "c", "__metadata__"] {
        for (k, v) in entry_variants.iter().enumerate() {
            let mut h = header.clone();
            h[name] = v.clone();
            std::fs::write(&path, safetensors_with(&h, &data)).unwrap();
            r.case(
                &format!("safetensors `{name}` entry variant {k}"),
                || open_store_and_read(&path),
                names(&path),
            );
        }
    }
    // 2. The header length set to hostile values; truncation everywhere.
    for v in interesting_u64(seed.len() as u64, 8) {
        let mut b = seed.clone();
        b[..8].copy_from_slice(&v.to_le_bytes());
        std::fs::write(&path, &b).unwrap();
        r.case(
            &format!("safetensors header length {v}"),
            || open_store_and_read(&path),
            names(&path),
        );
    }
    for cut in 0..seed.len() {
        std::fs::write(&path, &seed[..cut]).unwrap();
        r.case(
            &format!("safetensors truncated at {cut}"),
            || open_store_and_read(&path),
            names(&path),
        );
    }
    // 3. Deep nesting and random damage.
    for depth in [64usize, 100_000] {
        let text = "[".repeat(depth);
        let mut b = (text.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(text.as_bytes());
        std::fs::write(&path, &b).unwrap();
        r.case(
            &format!("safetensors nested {depth}"),
            || open_store_and_read(&path),
            names(&path),
        );
    }
    let mut rng = Rng::new(3);
    for i in 0..random_cases() {
        let mut b = seed.clone();
        mutate(&mut rng, &mut b, 8 + hlen);
        std::fs::write(&path, &b).unwrap();
        r.case(
            &format!("safetensors random mutation {i}"),
            || open_store_and_read(&path),
            names(&path),
        );
    }
    r.finish("safetensors", 500);
}

// ---------------------------------------------------------------------------------------------
// Hugging Face folders: config.json, the index, tokenizer_config.json

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn open_folder(dir: &Path) -> Result<(), String> {
    let s = Store::open(dir).map_err(|e| e.to_string())?;
    for t in 0..s.tensors.len() {
        if s.tensors[t].n_elements() <= 1 << 16 {
            let _ = s.read_f32(t).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

fn folder_err(e: &str) -> bool {
    e.contains(".json") || e.contains(".safetensors") || e.contains("tensor `")
}

#[test]
fn fuzz_hf_folder() {
    quiet_panics();
    let root = scratch();
    let clean = root.path().join("clean");
    tiny().write_hf(&clean, 2).unwrap();
    let work = root.path().join("work");
    let mut r = Report::default();
    let run = |r: &mut Report, file: &str, what: String, bytes: Vec<u8>| {
        let _ = std::fs::remove_dir_all(&work);
        copy_dir(&clean, &work);
        std::fs::write(work.join(file), bytes).unwrap();
        r.case(&format!("{file} {what}"), || open_folder(&work), folder_err);
    };
    // config.json: every value hostile, plus RoPE scaling sections with hostile values.
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(clean.join("config.json")).unwrap()).unwrap();
    let mut configs = json_variants(&config);
    let extras = [
        serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
        serde_json::json!({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048}),
        serde_json::json!({"type": "linear", "factor": 2.0}),
    ];
    for rope in extras {
        let mut c = config.clone();
        c["rope_scaling"] = rope;
        for (what, v) in json_variants(&c)
            .into_iter()
            .filter(|(w, _)| w.contains("rope_scaling") || w.contains("head_dim"))
        {
            configs.push((what, v));
        }
    }
    for (what, c) in configs {
        run(&mut r, "config.json", what, serde_json::to_vec(&c).unwrap());
    }
    // The index.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(clean.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    for (what, v) in json_variants(&index) {
        run(
            &mut r,
            "model.safetensors.index.json",
            what,
            serde_json::to_vec(&v).unwrap(),
        );
    }
    for odd in [
        "/etc/passwd",
        "../clean/model-00001-of-00002.safetensors",
        "",
        ".",
    ] {
        let mut v = index.clone();
        let first = v["weight_map"]
            .as_object()
            .unwrap()
            .keys()
            .next()
            .unwrap()
            .clone();
        v["weight_map"][first] = serde_json::json!(odd);
        run(
            &mut r,
            "model.safetensors.index.json",
            format!("shard {odd:?}"),
            serde_json::to_vec(&v).unwrap(),
        );
    }
    // tokenizer_config.json next to a tokenizer-less folder, and raw garbage in each file.
    let tc = serde_json::json!({"add_bos_token": true, "added_tokens_decoder":
        {"0": {"content": "<s>", "special": true}}, "chat_template": "{{ x }}"});
    for (what, v) in json_variants(&tc) {
        run(
            &mut r,
            "tokenizer_config.json",
            what,
            serde_json::to_vec(&v).unwrap(),
        );
    }
    let mut rng = Rng::new(4);
    for i in 0..random_cases() / 3 {
        for file in ["config.json", "model.safetensors.index.json"] {
            let mut b = std::fs::read(clean.join(file)).unwrap();
            let n = b.len();
            mutate(&mut rng, &mut b, n);
            run(&mut r, file, format!("random mutation {i}"), b);
        }
    }
    r.finish("hf folder", 1000);
}

// ---------------------------------------------------------------------------------------------
// imatrix

fn legacy_imatrix() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&2i32.to_le_bytes());
    for (name, n) in [("blk.0.attn_q.weight", 32i32), ("output.weight", 64)] {
        b.extend_from_slice(&(name.len() as i32).to_le_bytes());
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(&3i32.to_le_bytes());
        b.extend_from_slice(&n.to_le_bytes());
        for i in 0..n {
            b.extend_from_slice(&(i as f32).to_le_bytes());
        }
    }
    b.extend_from_slice(&10i32.to_le_bytes());
    b.extend_from_slice(&4i32.to_le_bytes());
    b.extend_from_slice(b"wiki");
    b
}

fn gguf_imatrix() -> Vec<u8> {
    fn s(b: &mut Vec<u8>, x: &str) {
        b.extend_from_slice(&(x.len() as u64).to_le_bytes());
        b.extend_from_slice(x.as_bytes());
    }
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&2u64.to_le_bytes());
    b.extend_from_slice(&3u64.to_le_bytes());
    s(&mut b, "imatrix.datasets");
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    s(&mut b, "wiki");
    s(&mut b, "imatrix.chunk_count");
    b.extend_from_slice(&4u32.to_le_bytes());
    b.extend_from_slice(&10u32.to_le_bytes());
    s(&mut b, "imatrix.chunk_size");
    b.extend_from_slice(&4u32.to_le_bytes());
    b.extend_from_slice(&512u32.to_le_bytes());
    for (name, dims, off) in [
        ("blk.0.attn_q.weight.in_sum2", [32u64, 2], 0u64),
        ("blk.0.attn_q.weight.counts", [1, 2], 256),
    ] {
        s(&mut b, name);
        b.extend_from_slice(&2u32.to_le_bytes());
        for d in dims {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&off.to_le_bytes());
    }
    while b.len() % 32 != 0 {
        b.push(0);
    }
    for i in 0..64 {
        b.extend_from_slice(&(i as f32).to_le_bytes());
    }
    for _ in 0..8 {
        b.extend_from_slice(&3f32.to_le_bytes());
    }
    b
}

#[test]
fn fuzz_imatrix() {
    quiet_panics();
    use smelt::quant::imatrix::Imatrix;
    let dir = scratch();
    let mut r = Report::default();
    let load = |p: &PathBuf| -> Result<(), String> {
        let m = Imatrix::load(p).map_err(|e| e.to_string())?;
        for (name, v) in &m.entries {
            let _ = m.for_tensor(name, v.len(), 1);
            let _ = m.for_tensor(name, 32, 2);
        }
        Ok(())
    };
    // Legacy: every 4-byte field hostile, every truncation, random damage.
    let seed = legacy_imatrix();
    let path = dir.path().join("im.dat");
    let mut fields = vec![0usize];
    let mut p = 4;
    for n in [32usize, 64] {
        let len = i32::from_le_bytes(seed[p..p + 4].try_into().unwrap()) as usize;
        fields.extend([p, p + 4 + len, p + 8 + len]);
        p += 12 + len + 4 * n;
    }
    fields.extend([p, p + 4]);
    for &pos in &fields {
        for v in interesting_u32().into_iter().chain([
            (-1i32) as u32,
            i32::MIN as u32,
            (i32::MAX / 4 + 1) as u32,
        ]) {
            let mut b = seed.clone();
            b[pos..pos + 4].copy_from_slice(&v.to_le_bytes());
            std::fs::write(&path, &b).unwrap();
            r.case(
                &format!("legacy imatrix field @{pos} = {v}"),
                || load(&path),
                names(&path),
            );
        }
    }
    for cut in 0..seed.len() {
        std::fs::write(&path, &seed[..cut]).unwrap();
        r.case(
            &format!("legacy imatrix truncated at {cut}"),
            || load(&path),
            names(&path),
        );
    }
    let mut rng = Rng::new(5);
    for i in 0..random_cases() {
        let mut b = seed.clone();
        mutate(&mut rng, &mut b, 64);
        std::fs::write(&path, &b).unwrap();
        r.case(
            &format!("legacy imatrix random {i}"),
            || load(&path),
            names(&path),
        );
    }
    // GGUF imatrix.
    let seed = gguf_imatrix();
    let path = dir.path().join("im.gguf");
    let (fields, _) = gguf_fields(&seed);
    for (pos, width, what) in &fields {
        for (v, b) in field_mutations(&seed, *pos, *width) {
            std::fs::write(&path, &b).unwrap();
            r.case(
                &format!("gguf imatrix {what} = {v}"),
                || load(&path),
                names(&path),
            );
        }
    }
    // Counts of 0, negative and huge, a sums tensor that does not split into experts.
    let data = seed.len() - 8 * 4;
    for v in [0f32, -1.0, f32::NAN, f32::INFINITY, 1e30] {
        let mut b = seed.clone();
        b[data..data + 4].copy_from_slice(&v.to_le_bytes());
        std::fs::write(&path, &b).unwrap();
        r.case(
            &format!("gguf imatrix count {v}"),
            || load(&path),
            names(&path),
        );
    }
    for i in 0..random_cases() {
        let mut b = seed.clone();
        mutate(&mut rng, &mut b, data);
        std::fs::write(&path, &b).unwrap();
        r.case(
            &format!("gguf imatrix random {i}"),
            || load(&path),
            names(&path),
        );
    }
    r.finish("imatrix", 1000);
}

// ---------------------------------------------------------------------------------------------
// Recipes

const RECIPE_SEEDS: [&str; 4] = [
    "merge_method: slerp\nbase_model: a.gguf\nmodels:\n  - model: a.gguf\n  - model: b.gguf\nparameters:\n  t:\n    - filter: self_attn\n      value: [0, 0.5, 1]\n    - value: 0.5\ndtype: float16\n",
    "name: x\nslices:\n  - sources:\n      - model: a.gguf\n        layer_range: [0, 2]\n      - model: b.gguf\n        layer_range: [0, 2]\nmerge_method: linear\nparameters:\n  weight: 0.5\n---\nmerge_method: passthrough\nslices:\n  - sources:\n      - model: x\n        layer_range: [0, 1]\n    repeat: 2\n",
    "merge_method: ties\nbase_model: a.gguf\nmodels:\n  - model: b.gguf\n    parameters:\n      density: 0.5\n      weight: [1, 0]\ntokenizer:\n  source: union\n  pad_to_multiple_of: 8\n",
    "merge_method: task_arithmetic\nbase_model: a.gguf\nslices:\n  - sources:\n      - model: a.gguf\n        layer_range: [0, 1]\n      - model: b.gguf\n        layer_range: [1, 2]\n        parameters: {weight: -1}\nglobals:\n  merge_method: linear\n  models:\n    - model: a.gguf\n      parameters: {weight: 1}\n",
];

const RECIPE_HOSTILE: [&str; 27] = [
    "",
    "0",
    "1e30",
    "-1e30",
    "1e-300",
    "~",
    "[]",
    "{}",
    "-1",
    "1e999",
    "18446744073709551615",
    "-9223372036854775808",
    "nan",
    ".inf",
    "\"\"",
    "[[[[[[]]]]]]",
    "*a",
    "&a x",
    "!!binary AAAA",
    "\u{0}",
    "\u{feff}",
    "[1, 2, 3, 4, 5]",
    "[-5, -1]",
    "[2, 1]",
    "[0, 18446744073709551615]",
    "4294967295",
    "[0, 9223372036854775807]",
];

/// Each scalar after `: ` or `- ` in `seed` replaced by each hostile value.
fn recipe_variants(seed: &str) -> Vec<(String, String)> {
    let spots: Vec<usize> = seed
        .match_indices(": ")
        .map(|(i, _)| i + 2)
        .chain(seed.match_indices("- ").map(|(i, _)| i + 2))
        .collect();
    let mut out = Vec::new();
    for &at in &spots {
        let end = seed[at..].find('\n').map_or(seed.len(), |e| at + e);
        for h in RECIPE_HOSTILE {
            out.push((
                format!("@{at} = {h:?}"),
                format!("{}{h}{}", &seed[..at], &seed[end..]),
            ));
        }
    }
    out
}

#[test]
fn fuzz_recipe_text() {
    quiet_panics();
    let mut r = Report::default();
    let parse = |t: &str| smelt::recipe::parse(t, "r.yaml").map_err(|e| e.to_string());
    let err_ok = |e: &str| e.contains("r.yaml");
    for (si, seed) in RECIPE_SEEDS.iter().enumerate() {
        for (what, t) in recipe_variants(seed) {
            r.case(&format!("recipe {si} {what}"), || parse(&t), err_ok);
        }
        for cut in 0..seed.len() {
            if seed.is_char_boundary(cut) {
                let t = &seed[..cut];
                r.case(&format!("recipe {si} cut at {cut}"), || parse(t), err_ok);
            }
        }
        let mut rng = Rng::new(6 + si as u64);
        for i in 0..random_cases() {
            let mut b = seed.as_bytes().to_vec();
            mutate(&mut rng, &mut b, seed.len());
            let t = String::from_utf8_lossy(&b).into_owned();
            r.case(&format!("recipe {si} random {i}"), || parse(&t), err_ok);
        }
    }
    // Alias bombs and deep nesting.
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let p = i - 1;
        bomb.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    bomb.push_str("merge_method: linear\nmodels:\n  - model: *a11\n");
    r.case("recipe alias bomb", || parse(&bomb), err_ok);
    let deep = format!(
        "merge_method: {}{}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    r.case("recipe nested 100000", || parse(&deep), err_ok);
    r.finish("recipe", 1000);
}

/// One recipe per merge method with every parameter it reads written out, for the damage to
/// reach each parameter.
const METHOD_SEEDS: [&str; 9] = [
    "merge_method: karcher\nmodels:\n  - model: a.gguf\n  - model: b.gguf\nparameters:\n  max_iter: 10\n  tol: 0.00001\n",
    "merge_method: dare_ties\nbase_model: a.gguf\nmodels:\n  - model: b.gguf\n    parameters:\n      density: 0.5\n      weight: 1\nparameters:\n  lambda: 1\n  normalize: true\n  rescale: true\n",
    "merge_method: della\nbase_model: a.gguf\nmodels:\n  - model: b.gguf\n    parameters:\n      density: 0.5\n      weight: 1\n      epsilon: 0.1\nparameters:\n  lambda: 1\n",
    "merge_method: breadcrumbs_ties\nbase_model: a.gguf\nmodels:\n  - model: b.gguf\n    parameters:\n      density: 0.5\n      weight: 1\n      gamma: 0.01\n",
    "merge_method: sce\nbase_model: a.gguf\nmodels:\n  - model: b.gguf\nparameters:\n  select_topk: 0.5\n",
    "merge_method: nuslerp\nmodels:\n  - model: a.gguf\n    parameters:\n      weight: 0.3\n  - model: b.gguf\n    parameters:\n      weight: 0.7\nparameters:\n  nuslerp_flatten: false\n  nuslerp_row_wise: true\n",
    "merge_method: multislerp\nmodels:\n  - model: a.gguf\n    parameters:\n      weight: 1\n  - model: b.gguf\n    parameters:\n      weight: 2\nparameters:\n  normalize_weights: true\n  eps: 0.00000001\n",
    "merge_method: model_stock\nbase_model: a.gguf\nmodels:\n  - model: b.gguf\n  - model: c.gguf\nparameters:\n  filter_wise: false\n",
    "merge_method: nearswap\nbase_model: a.gguf\nmodels:\n  - model: b.gguf\nparameters:\n  t: 0.001\n---\nmerge_method: arcee_fusion\nbase_model: a.gguf\nmodels:\n  - model: b.gguf\n",
];

#[test]
fn fuzz_merge_plans() {
    // Recipes that parse, planned against two real tiny models: layer ranges, repeats,
    // parameters, tokenizer settings and globals all hostile.
    quiet_panics();
    let dir = scratch();
    for (name, seed) in [("a.gguf", 1), ("b.gguf", 2), ("c.gguf", 3)] {
        TinyLlama {
            n_layer: 2,
            seed,
            ..tiny()
        }
        .write_gguf(&dir.path().join(name))
        .unwrap();
    }
    let mut r = Report {
        input_len: Some(256 << 10),
        ..Report::default()
    };
    let plan = |text: &str| -> Result<(), String> {
        let docs = smelt::recipe::parse(text, "r.yaml").map_err(|e| e.to_string())?;
        let mut named = Vec::new();
        for d in &docs {
            let p = smelt::merge::MergePlan::new(
                d,
                text,
                "r.yaml",
                dir.path(),
                &named,
                &Default::default(),
            )
            .map_err(|e| e.to_string())?;
            let _ = p.summary();
            // Compute every merged tensor: hostile parameters must give errors, not panics,
            // hangs or huge allocations.
            use smelt::write::TensorProducer;
            for i in 0..p.tensors.len() {
                let n: u64 = p.tensors[i].shape.iter().product();
                let mut out = vec![0f32; n as usize];
                p.read_rows(i, 0, &mut out).map_err(|e| e.to_string())?;
                p.release(i);
            }
            if let Some(n) = d.name.as_ref() {
                // A later document may name this one: point it at an existing model.
                named.push((n.value.clone(), dir.path().join("a.gguf")));
            }
        }
        Ok(())
    };
    let err_ok = |e: &str| e.contains("r.yaml") || e.contains("tensor `");
    for (si, seed) in RECIPE_SEEDS.iter().chain(&METHOD_SEEDS).enumerate() {
        // The seeds themselves plan: the damage below starts from working recipes.
        if let Err(e) = plan(seed) {
            panic!("seed recipe {si} does not plan: {e}");
        }
        for (what, t) in recipe_variants(seed) {
            r.case(&format!("plan {si} {what}"), || plan(&t), err_ok);
        }
        let mut rng = Rng::new(20 + si as u64);
        for i in 0..random_cases() / 3 {
            let mut b = seed.as_bytes().to_vec();
            mutate(&mut rng, &mut b, seed.len());
            let t = String::from_utf8_lossy(&b).into_owned();
            r.case(&format!("plan {si} random {i}"), || plan(&t), err_ok);
            // Two or three values hostile at once (e.g. `tol: 0` with a huge `max_iter`).
            let mut t = seed.to_string();
            let mut what = String::new();
            for _ in 0..2 + rng.below(2) {
                let spots: Vec<usize> = t.match_indices(": ").map(|(i, _)| i + 2).collect();
                let at = *rng.pick(&spots);
                let end = t[at..].find('\n').map_or(t.len(), |e| at + e);
                let h = *rng.pick(&RECIPE_HOSTILE[..]);
                what.push_str(&format!(" @{at}={h:?}"));
                t = format!("{}{h}{}", &t[..at], &t[end..]);
            }
            r.case(
                &format!("plan {si} combined {i}{what}"),
                || plan(&t),
                err_ok,
            );
        }
    }
    r.finish("merge plans", 500);
}

// ---------------------------------------------------------------------------------------------
// config.json of every architecture, through the architecture tables directly

#[test]
fn fuzz_arch_configs() {
    quiet_panics();
    use serde_json::json;
    use smelt::arch::{self, Permute};
    let mut r = Report {
        input_len: Some(64 << 10),
        ..Report::default()
    };
    let ropes = [
        json!(null),
        json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
        json!({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048,
            "beta_fast": 32, "attn_factor": 1.0}),
        json!({"type": "longrope", "long_factor": [1.0, 2.0, 3.0, 4.0],
            "short_factor": [1.0, 1.0, 1.0, 1.0], "original_max_position_embeddings": 1024}),
        json!({"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_theta": 1e4}}),
    ];
    for a in arch::ARCHITECTURES {
        for (ri, rope) in ropes.iter().enumerate() {
            let config = json!({
                "architectures": [a.hf_architectures[0]],
                "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
                "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8,
                "vocab_size": 300, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
                "rope_theta": 10000.0, "rope_scaling": rope, "sliding_window": 512,
                "sliding_window_pattern": 6, "partial_rotary_factor": 0.5,
                "num_local_experts": 4, "num_experts_per_tok": 2,
                "final_logit_softcapping": 30.0, "query_pre_attn_scalar": 8,
            });
            for (what, c) in json_variants(&config) {
                r.case(
                    &format!("{} rope {ri} {what}", a.gguf_name),
                    || -> Result<(), String> {
                        let heads = a.heads(&c)?;
                        a.metadata(&c, "m")?;
                        a.n_expert(&c)?;
                        arch::llama3_rope_freqs(&c, a)?;
                        if let Some(generate) = a.hooks.generated_tensors {
                            generate(&c, a)?;
                        }
                        for n_rows in [0usize, 1, 7, 8, 16, usize::MAX] {
                            for p in [Permute::Heads, Permute::KvHeads] {
                                let _ = a.row_order(p, heads, n_rows);
                            }
                        }
                        Ok(())
                    },
                    |_| true,
                );
            }
        }
    }
    r.finish("arch configs", 1000);
}
