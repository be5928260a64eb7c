//! `inspect`: what a model file holds — a summary first, then every metadata key and tensor —
//! as text for people or JSON for programs.

use crate::error::printable;
use crate::gguf::Value;
use crate::store::Store;

/// Tensor count, parameters, bytes and bits per weight of the whole model.
fn totals(store: &Store) -> (u64, u64, f64) {
    let total_elems: u64 = store.tensors.iter().map(|t| t.n_elements()).sum();
    let total_bytes: u64 = store.tensors.iter().map(|t| t.n_bytes).sum();
    let bpw = if total_elems > 0 {
        total_bytes as f64 * 8.0 / total_elems as f64
    } else {
        0.0
    };
    (total_elems, total_bytes, bpw)
}

/// The JSON document of `inspect --json`: files, metadata (long arrays shortened unless
/// `full`), tensors and totals.
pub fn json(store: &Store, full: bool) -> serde_json::Value {
    let (total_elems, total_bytes, bpw) = totals(store);
    let meta: serde_json::Map<String, serde_json::Value> = store
        .metadata
        .iter()
        .map(|(k, v)| (k.to_string(), value_to_json(v, full)))
        .collect();
    let tensors: Vec<serde_json::Value> = store
        .tensors
        .iter()
        .map(|t| {
            serde_json::json!({
                "name": t.name, "type": t.ty.name(), "shape": t.shape, "bytes": t.n_bytes,
            })
        })
        .collect();
    serde_json::json!({
        "files": store.paths(),
        "metadata": meta,
        "tensors": tensors,
        "totals": {"tensors": store.tensors.len(), "parameters": total_elems,
                   "bytes": total_bytes, "bits_per_weight": bpw},
    })
}

/// The text of `inspect`.
pub fn text(store: &Store) -> String {
    let (total_elems, total_bytes, bpw) = totals(store);
    use std::fmt::Write as _;
    let mut out = String::new();
    macro_rules! outln { ($o:expr, $($t:tt)*) => { let _ = writeln!($o, $($t)*); } }
    for p in store.paths() {
        outln!(out, "file: {}", p.display());
    }
    // The summary first: what a user looks for, before hundreds of keys and tensors.
    let md = &store.metadata;
    let arch = md.architecture().unwrap_or("?");
    outln!(out, "architecture: {}", printable(arch));
    if let Some(name) = md.get_str("general.name") {
        outln!(out, "name: {}", printable(name));
    }
    let file_type = md.get_u64("general.file_type").map(|id| {
        crate::quant::mix::FileType::ALL
            .iter()
            .find(|f| u64::from(f.id()) == id)
            .map(|f| f.name().to_string())
            .unwrap_or_else(|| format!("unknown ({id})"))
    });
    outln!(
        out,
        "parameters: {} ({:.2}M), size: {:.2} MiB, {:.3} bits per weight, file type: {}",
        total_elems,
        total_elems as f64 / 1e6,
        total_bytes as f64 / (1 << 20) as f64,
        bpw,
        file_type.as_deref().unwrap_or("not recorded")
    );
    outln!(out, "\nmetadata ({} keys):", store.metadata.len());
    for (k, v) in store.metadata.iter() {
        outln!(out, "  {:<45} {}", printable(k), printable(&v.to_string()));
    }
    outln!(out, "\ntensors ({}):", store.tensors.len());
    outln!(
        out,
        "  {:<40} {:<8} {:<22} {:>14}",
        "name",
        "type",
        "shape",
        "bytes"
    );
    let mut by_type = std::collections::BTreeMap::<&str, (usize, u64)>::new();
    for t in &store.tensors {
        let shape = t
            .shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(" x ");
        outln!(
            out,
            "  {:<40} {:<8} {:<22} {:>14}",
            printable(&t.name),
            t.ty.name(),
            shape,
            t.n_bytes
        );
        let e = by_type.entry(t.ty.name()).or_default();
        e.0 += 1;
        e.1 += t.n_bytes;
    }
    outln!(out, "\ntotals:");
    for (ty, (n, b)) in by_type {
        outln!(out, "  {ty:<8} {n:>5} tensors {b:>14} bytes");
    }
    outln!(
        out,
        "  {} parameters, {} bytes ({:.2} MiB), {:.3} bits per weight",
        total_elems,
        total_bytes,
        total_bytes as f64 / (1 << 20) as f64,
        bpw
    );
    out
}

fn value_to_json(v: &Value, full: bool) -> serde_json::Value {
    use serde_json::json;
    match v {
        Value::Array(..) | Value::Numbers(..) => {
            let len = v.array_len().unwrap_or(0);
            let shown = if full || len <= 16 { len } else { 8 };
            let items = (0..shown).filter_map(|i| v.item(i).map(|x| value_to_json(&x, full)));
            if !full && len > 16 {
                json!({"array_len": len, "head": items.collect::<Vec<_>>()})
            } else {
                serde_json::Value::Array(items.collect())
            }
        }
        Value::String(s) => json!(s),
        Value::Bool(b) => json!(b),
        Value::F32(x) => json!(x),
        Value::F64(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::U8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::U64(x) => json!(x),
    }
}
