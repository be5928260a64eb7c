//! Tensors made at open time (permuted biases, RoPE factors) and the architecture hooks that
//! make or trim tensors: written to one unlinked temporary file and mapped like the inputs.

use super::config::Model;
use super::{Key, Pending, ROPE_FREQS, TOKEN_EMBD};
use crate::arch;
use crate::error::{Error, Result};
use crate::gguf::GgmlType;
use crate::store::{RowOrder, SourceFile, StoreTensor};
use memmap2::Mmap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Tensors made at open time (permuted biases, llama3 RoPE factors), written to one
/// unlinked temporary file and mapped like the inputs.
#[derive(Default)]
pub(super) struct Generated {
    bytes: Vec<u8>,
    tensors: Vec<Pending>,
}

impl Generated {
    pub fn push(&mut self, key: Key, name: String, shape: Vec<u64>, ty: GgmlType, data: &[u8]) {
        while self.bytes.len() % 32 != 0 {
            self.bytes.push(0);
        }
        let offset = self.bytes.len() as u64;
        self.bytes.extend_from_slice(data);
        self.tensors.push(Pending {
            key,
            // The file index is set once the file exists.
            tensor: StoreTensor::plain(name, shape, ty, usize::MAX, offset, data.len() as u64),
        });
    }

    /// Write the bytes to an unlinked temporary file and map it: pages stay file-backed, so
    /// [`Store::release`] may drop them like those of the inputs.
    pub fn into_file(
        self,
        origin: &Path,
        index: usize,
    ) -> Result<Option<(SourceFile, Vec<Pending>)>> {
        if self.tensors.is_empty() {
            return Ok(None);
        }
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let tmp = std::env::temp_dir().join(format!(
            "smelt-generated-{}-{}.bin",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let write = || -> std::io::Result<File> {
            std::fs::write(&tmp, &self.bytes)?;
            File::open(&tmp)
        };
        let file = write();
        let _ = std::fs::remove_file(&tmp);
        let file = file.map_err(|e| Error::io(&tmp, e))?;
        // SAFETY: read-only map of a private temporary file that nothing else can reach once
        // it is unlinked (above), so it cannot change underneath the map.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&tmp, e))?;
        let mut tensors = self.tensors;
        for p in &mut tensors {
            p.tensor.file = index;
        }
        let mut name = origin.as_os_str().to_owned();
        name.push(" (generated tensors)");
        Ok(Some((
            SourceFile {
                path: PathBuf::from(name),
                map: Arc::new(map),
                file: Arc::new(file),
            },
            tensors,
        )))
    }
}

/// Element-wise llama.cpp head permutation of a 1-D tensor (a q/k bias): value `(h, i, j)`
/// of the `(n_head, n/n_head/2, 2)` grid is stored value `(h, j, i)`.
pub(super) fn permute_elements(raw: &[u8], elem: usize, order: RowOrder) -> Vec<u8> {
    let n = raw.len() / elem;
    let mut out = Vec::with_capacity(raw.len());
    for k in 0..n {
        let s = order.stored_row(k, n);
        out.extend_from_slice(&raw[s * elem..(s + 1) * elem]);
    }
    out
}

/// llama3's `rope_freqs` when the config asks for it, then the architecture's own generated
/// tensors (Phi-3's long-RoPE factors).
pub(super) fn generate_tensors(model: &Model, generated: &mut Generated) -> Result<()> {
    let Some((a, json, cp)) = model.with_config() else {
        return Ok(());
    };
    let freqs = arch::llama3_rope_freqs(json, a).map_err(|m| Error::format(cp, m))?;
    if let Some(f) = freqs {
        let bytes: Vec<u8> = f.iter().flat_map(|x| x.to_le_bytes()).collect();
        generated.push(
            (0, 0, String::new(), 0),
            ROPE_FREQS.into(),
            vec![f.len() as u64],
            GgmlType::F32,
            &bytes,
        );
    }
    if let Some(hook) = a.hooks.generated_tensors {
        let tensors = hook(json, a).map_err(|m| Error::format(cp, m))?;
        for (k, (name, values)) in tensors.into_iter().enumerate() {
            let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
            generated.push(
                (0, 0, String::new(), k),
                name.into(),
                vec![values.len() as u64],
                GgmlType::F32,
                &bytes,
            );
        }
    }
    Ok(())
}

/// The architecture's `embd_rows` hook (Gemma 3 keeps the real vocabulary's rows).
pub(super) fn trim_embd(model: &Model, pending: &mut [Pending]) -> Result<()> {
    let Some((a, _, cp)) = model.with_config() else {
        return Ok(());
    };
    if let Some(embd_rows) = a.hooks.embd_rows {
        if let Some(n) = embd_rows(cp.parent().unwrap_or(Path::new(".")))? {
            if let Some(p) = pending.iter_mut().find(|p| p.tensor.name == TOKEN_EMBD) {
                let t = &mut p.tensor;
                if t.shape.len() == 2 && t.parts.is_empty() && (n as u64) < t.shape[1] {
                    t.shape[1] = n as u64;
                    t.n_bytes = (n * t.row_bytes()) as u64;
                }
            }
        }
    }
    Ok(())
}
