//! The reference log-probabilities file of `llama-perplexity --kl-divergence-base`, which
//! `smelt eval --save-logits` writes and `--ref-logits` reads, so that files pass both ways
//! between smelt and llama.cpp.
//!
//! Layout (little-endian, as llama.cpp writes it on the machines it runs on):
//!
//! - `_logits_` (8 bytes), then `n_ctx` (u32), `n_vocab` (i32), `n_chunk` (i32);
//! - the evaluated tokens, `n_chunk * n_ctx` i32: the text's tokens as tokenized (BOS added at
//!   the start of the text where the vocabulary adds one, not substituted into each chunk);
//! - per chunk, one row per scored position (`n_ctx - 1 - n_ctx/2` of them), each
//!   [`row_len`]`(n_vocab)` u16: the f32 `scale` and `min_log_prob` (two u16 each), then one
//!   u16 `q` per token with `log p ≈ scale * q + min_log_prob`, zero-padded to an even count.
//!   Logits more than 16 below the row's maximum are all stored as `q = 0`.

use crate::error::{Error, Result};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

pub const MAGIC: [u8; 8] = *b"_logits_";
/// Magic, n_ctx, n_vocab, n_chunk.
const HEADER_BYTES: u64 = 8 + 3 * 4;
/// llama.cpp keeps this many nats below a row's top logit; lower ones share `q = 0`.
const LOG_PROB_RANGE: f32 = 16.0;

/// u16s per stored row: the two f32 of the row's scale and offset, then the vocabulary padded
/// to an even count.
pub fn row_len(n_vocab: usize) -> usize {
    2 * n_vocab.div_ceil(2) + 4
}

/// Scored positions per chunk: the second half of the chunk, less the last position (which
/// predicts nothing inside the chunk).
pub fn rows_per_chunk(n_ctx: usize) -> usize {
    n_ctx.saturating_sub(1 + n_ctx / 2)
}

/// One stored row, decoded: `log p(i) ≈ scale * q[i] + min_log_prob`.
#[derive(Clone, Copy, Debug)]
pub struct BaseRow<'a> {
    pub scale: f32,
    pub min_log_prob: f32,
    pub q: &'a [u16],
}

impl<'a> BaseRow<'a> {
    /// The row stored in `raw` ([`row_len`]`(n_vocab)` u16s).
    pub fn new(raw: &'a [u16], n_vocab: usize) -> BaseRow<'a> {
        let f = |i: usize| f32::from_bits(u32::from(raw[i]) | (u32::from(raw[i + 1]) << 16));
        BaseRow {
            scale: f(0),
            min_log_prob: f(2),
            q: &raw[4..4 + n_vocab],
        }
    }

    /// The stored log-probability of token `i` (in f32, as llama-perplexity decodes it).
    pub fn log_prob(&self, i: usize) -> f32 {
        self.scale * f32::from(self.q[i]) + self.min_log_prob
    }
}

/// Store the log-softmax of `logits` in `out` ([`row_len`]`(logits.len())` u16s) as
/// llama-perplexity does: 16 bits over the top 16 nats of the row.
pub fn compress_row(logits: &[f32], out: &mut [u16]) {
    let n_vocab = logits.len();
    debug_assert_eq!(out.len(), row_len(n_vocab));
    let Some(&first) = logits.first() else {
        out.fill(0);
        return;
    };
    let (mut max, mut min) = (first, first);
    for &v in &logits[1..] {
        max = max.max(v);
        min = min.min(v);
    }
    let min = min.max(max - LOG_PROB_RANGE);
    // expf of each term, summed in f64, the log taken in f64 and rounded to f32: llama.cpp's
    // order of operations, so that both write the same bits for the same logits.
    let sum_exp: f64 = logits.iter().map(|&v| f64::from((v - max).exp())).sum();
    let log_sum_exp = sum_exp.ln() as f32;
    let min_log_prob = min - max - log_sum_exp;
    let scale = (max - min) / 65535.0;
    let put = |out: &mut [u16], at: usize, v: f32| {
        out[at] = v.to_bits() as u16;
        out[at + 1] = (v.to_bits() >> 16) as u16;
    };
    put(out, 0, scale);
    put(out, 2, min_log_prob);
    let q = &mut out[4..];
    q.fill(0);
    if scale != 0.0 {
        let inv_scale = 1.0 / scale;
        for (o, &v) in q.iter_mut().zip(logits) {
            if v > min {
                // Round half to even, as llama.cpp's nearest_int; the float cast saturates.
                *o = (inv_scale * (v - min)).round_ties_even() as u16;
            }
        }
    }
}

/// What a file holds, from its header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub n_ctx: usize,
    pub n_vocab: usize,
    pub n_chunk: usize,
}

impl Header {
    /// The size of a complete file with this header, `None` past u64.
    fn file_bytes(&self) -> Option<u64> {
        let tokens = (self.n_chunk as u64).checked_mul(self.n_ctx as u64)?;
        let rows = (self.n_chunk as u64).checked_mul(rows_per_chunk(self.n_ctx) as u64)?;
        let row_bytes = 2 * row_len(self.n_vocab) as u64;
        HEADER_BYTES
            .checked_add(tokens.checked_mul(4)?)?
            .checked_add(rows.checked_mul(row_bytes)?)
    }
}

/// Reads a file chunk by chunk: the header and tokens when opened, then one chunk of rows per
/// [`LogitsReader::read_chunk`].
pub struct LogitsReader<R = BufReader<std::fs::File>> {
    path: PathBuf,
    input: R,
    pub header: Header,
    /// The evaluated tokens, `n_chunk * n_ctx` of them.
    pub tokens: Vec<u32>,
    chunks_read: usize,
    bytes: Vec<u8>,
}

impl LogitsReader {
    /// Open `path` and read its header and tokens; the file's size must be exactly what the
    /// header announces.
    pub fn open(path: &Path) -> Result<LogitsReader> {
        let file = crate::input::open(path)?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        LogitsReader::from_reader(path, BufReader::with_capacity(1 << 20, file), len)
    }
}

impl<R: Read> LogitsReader<R> {
    /// Read the header and tokens from `input`, `len` bytes long in all; `path` names it in
    /// errors.
    pub fn from_reader(path: &Path, mut input: R, len: u64) -> Result<LogitsReader<R>> {
        let bad = |msg: String| Error::format(path, msg);
        let mut head = [0u8; HEADER_BYTES as usize];
        let got = read_up_to(&mut input, &mut head).map_err(|e| Error::io(path, e))?;
        if got < MAGIC.len() || head[..8] != MAGIC {
            return Err(bad(
                "not a reference log-probabilities file (llama-perplexity --kl-divergence-base, smelt eval --save-logits): it does not start with `_logits_`".into(),
            ));
        }
        if got < head.len() {
            return Err(bad(format!(
                "truncated: {len} bytes, not even the {HEADER_BYTES}-byte header"
            )));
        }
        let word = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        let (n_ctx, n_vocab, n_chunk) = (word(8), word(12) as i32, word(16) as i32);
        if n_ctx < 2 || n_vocab < 1 || n_chunk < 1 {
            return Err(bad(format!(
                "garbled header: n_ctx {n_ctx}, n_vocab {n_vocab}, n_chunk {n_chunk}"
            )));
        }
        let header = Header {
            n_ctx: n_ctx as usize,
            n_vocab: n_vocab as usize,
            n_chunk: n_chunk as usize,
        };
        let want = header.file_bytes().ok_or_else(|| {
            bad(format!(
                "garbled header: n_ctx {n_ctx}, n_vocab {n_vocab}, n_chunk {n_chunk}"
            ))
        })?;
        if len != want {
            let what = if len < want { "truncated" } else { "garbled" };
            return Err(bad(format!(
                "{what}: {len} bytes, where {n_chunk} chunks of {n_ctx} tokens over a vocabulary of {n_vocab} take {want}"
            )));
        }
        // The size matches, so this allocation is bounded by the file's.
        let mut raw = vec![0u8; header.n_chunk * header.n_ctx * 4];
        input.read_exact(&mut raw).map_err(|e| Error::io(path, e))?;
        let mut tokens = Vec::with_capacity(raw.len() / 4);
        for (i, b) in raw.chunks_exact(4).enumerate() {
            let t = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            if t < 0 || t >= n_vocab {
                return Err(bad(format!(
                    "garbled: token {i} is {t}, outside the vocabulary of {n_vocab}"
                )));
            }
            tokens.push(t as u32);
        }
        Ok(LogitsReader {
            path: path.to_path_buf(),
            input,
            header,
            tokens,
            chunks_read: 0,
            bytes: Vec::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Refuse a file saved for another run: other tokens (another text or tokenizer), another
    /// `--ctx`, another vocabulary, or fewer chunks than the run evaluates. `tokens` are the
    /// run's, of which the first `n_chunks * n_ctx` are evaluated.
    pub fn check_run(
        &self,
        tokens: &[u32],
        n_ctx: usize,
        n_chunks: usize,
        n_vocab: usize,
    ) -> Result<()> {
        let h = &self.header;
        let bad = |msg: String| Err(Error::format(&self.path, msg));
        if h.n_ctx != n_ctx {
            return bad(format!(
                "saved with --ctx {} (llama-perplexity -c), this run uses --ctx {n_ctx}",
                h.n_ctx
            ));
        }
        if h.n_vocab != n_vocab {
            return bad(format!(
                "saved for a vocabulary of {} tokens, the model has {n_vocab}: KL divergence needs the same vocabulary",
                h.n_vocab
            ));
        }
        if h.n_chunk < n_chunks {
            return bad(format!(
                "holds {} chunks, this run evaluates {n_chunks} (pass --chunks {} or fewer)",
                h.n_chunk, h.n_chunk
            ));
        }
        let used = n_chunks * n_ctx;
        let ours = &tokens[..used.min(tokens.len())];
        let theirs = &self.tokens[..used];
        if ours != theirs {
            let at = ours
                .iter()
                .zip(theirs)
                .position(|(a, b)| a != b)
                .unwrap_or(ours.len());
            return bad(format!(
                "saved for another text or tokenizer: its tokens differ from this text's at token {at} of {used}"
            ));
        }
        Ok(())
    }

    /// The next chunk's rows into `rows` ([`rows_per_chunk`] × [`row_len`] u16s).
    pub fn read_chunk(&mut self, rows: &mut Vec<u16>) -> Result<()> {
        let h = &self.header;
        if self.chunks_read >= h.n_chunk {
            return Err(Error::format(
                &self.path,
                format!("holds only {} chunks", h.n_chunk),
            ));
        }
        let n = rows_per_chunk(h.n_ctx) * row_len(h.n_vocab);
        self.bytes.resize(2 * n, 0);
        self.input
            .read_exact(&mut self.bytes)
            .map_err(|e| Error::io(&self.path, e))?;
        rows.clear();
        rows.extend(
            self.bytes
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]])),
        );
        let chunk = self.chunks_read;
        self.chunks_read += 1;
        for (j, raw) in rows.chunks_exact(row_len(h.n_vocab)).enumerate() {
            let r = BaseRow::new(raw, h.n_vocab);
            let ok = r.scale.is_finite()
                && r.scale >= 0.0
                && r.min_log_prob.is_finite()
                && r.min_log_prob <= 0.0;
            if !ok {
                return Err(Error::format(
                    &self.path,
                    format!(
                        "garbled: chunk {}, row {j} has scale {} and minimum log-probability {}",
                        chunk + 1,
                        r.scale,
                        r.min_log_prob
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Fill `buf` as far as `input` goes; the count read.
fn read_up_to(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// The file's header and tokens as bytes; `tokens` must be `n_chunk * n_ctx` long.
pub fn encode_header(n_ctx: usize, n_vocab: usize, tokens: &[u32]) -> Result<Vec<u8>> {
    let fits = |v: usize| i32::try_from(v).is_ok();
    if n_ctx == 0 || !fits(n_ctx) || !fits(n_vocab) || tokens.len() % n_ctx != 0 {
        return Err(Error::Invalid(format!(
            "cannot save {} tokens in chunks of {n_ctx} over a vocabulary of {n_vocab}",
            tokens.len()
        )));
    }
    let n_chunk = tokens.len() / n_ctx;
    if !fits(n_chunk) {
        return Err(Error::Invalid(format!(
            "cannot save {n_chunk} chunks: at most {}",
            i32::MAX
        )));
    }
    let mut out = Vec::with_capacity(HEADER_BYTES as usize + 4 * tokens.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(n_ctx as u32).to_le_bytes());
    out.extend_from_slice(&(n_vocab as i32).to_le_bytes());
    out.extend_from_slice(&(n_chunk as i32).to_le_bytes());
    for &t in tokens {
        out.extend_from_slice(&t.to_le_bytes());
    }
    Ok(out)
}

/// Writes a file through an exclusive temporary file beside the target, moved into place by
/// [`LogitsWriter::finish`] once every chunk's rows came in; dropped unfinished, it leaves
/// nothing behind.
pub struct LogitsWriter {
    target: PathBuf,
    out: Option<BufWriter<std::fs::File>>,
    tmp: Option<tempfile::TempPath>,
    header: Option<Header>,
    rows_written: usize,
}

impl LogitsWriter {
    /// Start the temporary file for `target` (checked beforehand with
    /// `output_files::check_outputs`); the header comes with [`LogitsWriter::begin`].
    pub fn create(target: &Path) -> Result<LogitsWriter> {
        if target.file_name().is_none() {
            return Err(Error::Invalid(format!(
                "output path {} has no file name",
                target.display()
            )));
        }
        let (file, tmp) = crate::output_files::temp_file_beside(target)?;
        Ok(LogitsWriter {
            target: target.to_path_buf(),
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            tmp: Some(tmp),
            header: None,
            rows_written: 0,
        })
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Write the header and the evaluated tokens (`n_chunk * n_ctx` of them).
    pub fn begin(&mut self, n_ctx: usize, n_vocab: usize, tokens: &[u32]) -> Result<()> {
        if self.header.is_some() {
            return Err(Error::Invalid(format!(
                "{}: header written twice",
                self.target.display()
            )));
        }
        let bytes = encode_header(n_ctx, n_vocab, tokens)?;
        self.write(&bytes)?;
        self.header = Some(Header {
            n_ctx,
            n_vocab,
            n_chunk: tokens.len() / n_ctx,
        });
        Ok(())
    }

    /// Append rows ([`row_len`] u16s each, from [`compress_row`]).
    pub fn write_rows(&mut self, rows: &[u16]) -> Result<()> {
        let Some(h) = &self.header else {
            return Err(Error::Invalid(format!(
                "{}: rows before the header",
                self.target.display()
            )));
        };
        let len = row_len(h.n_vocab);
        if rows.len() % len != 0 {
            return Err(Error::Invalid(format!(
                "{}: a partial row",
                self.target.display()
            )));
        }
        self.rows_written += rows.len() / len;
        let bytes: Vec<u8> = rows.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.write(&bytes)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let out = self.out.as_mut().expect("writer is open until finished");
        out.write_all(bytes).map_err(|e| Error::io(&self.target, e))
    }

    /// Check that every row came in, flush, sync and move the file over the target; its size.
    pub fn finish(mut self) -> Result<u64> {
        let Some(h) = self.header.clone() else {
            return Err(Error::Invalid(format!(
                "{}: finished without a header",
                self.target.display()
            )));
        };
        let want = h.n_chunk * rows_per_chunk(h.n_ctx);
        if self.rows_written != want {
            return Err(Error::Invalid(format!(
                "{}: {} of {want} rows written",
                self.target.display(),
                self.rows_written
            )));
        }
        use crate::gguf::writer::{commit, FinishedFile};
        let finished = FinishedFile::seal(
            self.target.clone(),
            self.out.take().expect("writer is open until finished"),
            self.tmp.take().expect("writer is open until finished"),
        )?;
        let bytes = finished.bytes;
        commit(vec![finished])?;
        Ok(bytes)
    }
}

impl Drop for LogitsWriter {
    fn drop(&mut self) {
        self.out.take();
        if let Some(tmp) = self.tmp.take() {
            let path = tmp.to_path_buf();
            let _ = tmp.close(); // deletes the unfinished file
            crate::output_files::forget(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_store_log_softmax_in_16_bits() {
        // p = 0.1, 0.2, 0.3, 0.4, and one token 20 nats below the top (under the 16-nat floor).
        let logits = [0.0f32, 2f32.ln(), 3f32.ln(), 4f32.ln(), 4f32.ln() - 20.0];
        let mut raw = vec![0u16; row_len(logits.len())];
        assert_eq!(raw.len(), 10, "4 + 5 padded to 6");
        compress_row(&logits, &mut raw);
        let row = BaseRow::new(&raw, logits.len());
        let top = 4f32.ln();
        assert_eq!(row.scale, (top - (top - 16.0)) / 65535.0);
        assert_eq!(row.q[3], 65535, "the top logit takes the top code");
        assert_eq!(row.q[4], 0, "logits under the floor share code 0");
        assert_eq!(raw[9], 0, "padding");
        let sum = 1.0 + 2.0 + 3.0 + 4.0 + (-20f64).exp() * 4.0;
        for (i, p) in [1.0f64, 2.0, 3.0, 4.0].iter().enumerate() {
            let want = (p / sum).ln();
            let got = f64::from(row.log_prob(i));
            assert!(
                (got - want).abs() <= f64::from(row.scale),
                "{i}: {got} vs {want}"
            );
        }
        // The floor: stored as the lowest representable log-probability, top - 16 nats.
        assert!((f64::from(row.log_prob(4)) - (4.0 / sum).ln() + 16.0).abs() < 1e-5);
    }

    #[test]
    fn flat_row_has_zero_scale() {
        let mut raw = vec![7u16; row_len(3)];
        compress_row(&[1.5, 1.5, 1.5], &mut raw);
        let row = BaseRow::new(&raw, 3);
        assert_eq!(row.scale, 0.0);
        assert!((row.min_log_prob - (1.0f32 / 3.0).ln()).abs() < 1e-6);
        assert!(row.q.iter().all(|&q| q == 0));
    }

    /// A small file: header, tokens, then two chunks of rows.
    fn sample(n_ctx: usize, n_vocab: usize, n_chunk: usize) -> (Vec<u8>, Vec<u32>, Vec<u16>) {
        let tokens: Vec<u32> = (0..n_ctx * n_chunk)
            .map(|i| (i * 7 % n_vocab) as u32)
            .collect();
        let mut bytes = encode_header(n_ctx, n_vocab, &tokens).unwrap();
        let len = row_len(n_vocab);
        let n_rows = rows_per_chunk(n_ctx) * n_chunk;
        let mut rows = vec![0u16; n_rows * len];
        for (r, out) in rows.chunks_exact_mut(len).enumerate() {
            let logits: Vec<f32> = (0..n_vocab)
                .map(|i| ((i * 31 + r * 17) % 23) as f32 * 0.37 - 3.0)
                .collect();
            compress_row(&logits, out);
        }
        bytes.extend(rows.iter().flat_map(|v| v.to_le_bytes()));
        (bytes, tokens, rows)
    }

    #[test]
    fn header_tokens_and_rows_read_back() {
        let (n_ctx, n_vocab, n_chunk) = (8, 5, 2);
        let (bytes, tokens, rows) = sample(n_ctx, n_vocab, n_chunk);
        // 20 header bytes, 16 tokens, 2 chunks × 3 rows × 10 u16.
        assert_eq!(bytes.len(), 20 + 16 * 4 + 2 * 3 * 10 * 2);
        let path = Path::new("mem.kld");
        let mut r =
            LogitsReader::from_reader(path, std::io::Cursor::new(&bytes), bytes.len() as u64)
                .unwrap();
        assert_eq!(
            r.header,
            Header {
                n_ctx,
                n_vocab,
                n_chunk
            }
        );
        assert_eq!(r.tokens, tokens);
        r.check_run(&tokens, n_ctx, 2, n_vocab).unwrap();
        r.check_run(&tokens[..8], n_ctx, 1, n_vocab).unwrap();
        let mut got = Vec::new();
        let per_chunk = rows.len() / 2;
        r.read_chunk(&mut got).unwrap();
        assert_eq!(got, rows[..per_chunk]);
        r.read_chunk(&mut got).unwrap();
        assert_eq!(got, rows[per_chunk..]);
        let err = r.read_chunk(&mut got).unwrap_err().to_string();
        assert!(
            err.contains("mem.kld") && err.contains("only 2 chunks"),
            "{err}"
        );
    }

    #[test]
    fn files_for_another_run_are_refused_by_name() {
        let (bytes, tokens, _) = sample(8, 5, 2);
        let open = |b: &[u8]| {
            LogitsReader::from_reader(
                Path::new("base.kld"),
                std::io::Cursor::new(b),
                b.len() as u64,
            )
            .map(|_| ())
            .unwrap_err()
            .to_string()
        };
        let r = LogitsReader::from_reader(
            Path::new("base.kld"),
            std::io::Cursor::new(&bytes),
            bytes.len() as u64,
        )
        .unwrap();
        let check = |t: &[u32], ctx, chunks, vocab| {
            r.check_run(t, ctx, chunks, vocab).unwrap_err().to_string()
        };
        assert!(check(&tokens, 16, 1, 5).contains("--ctx 8"));
        assert!(check(&tokens, 8, 2, 6).contains("vocabulary of 5"));
        assert!(check(&tokens, 8, 3, 5).contains("holds 2 chunks"));
        let mut other = tokens.clone();
        other[11] = (other[11] + 1) % 5;
        assert!(check(&other, 8, 2, 5).contains("at token 11"));
        assert!(check(&tokens[..10], 8, 2, 5).contains("another text"));
        // Damaged files.
        assert!(open(&bytes[..bytes.len() - 1]).contains("truncated"));
        assert!(open(&bytes[..10]).contains("truncated"));
        assert!(open(b"GGUF").contains("does not start with `_logits_`"));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(open(&longer).contains("garbled"));
        let mut bad_vocab = bytes.clone();
        bad_vocab[12..16].copy_from_slice(&(-1i32).to_le_bytes());
        assert!(open(&bad_vocab).contains("garbled header"));
        let mut huge = bytes.clone();
        huge[16..20].copy_from_slice(&i32::MAX.to_le_bytes());
        assert!(open(&huge).contains("truncated"));
        let mut bad_token = bytes.clone();
        bad_token[20..24].copy_from_slice(&9i32.to_le_bytes());
        assert!(open(&bad_token).contains("token 0 is 9"));
        let mut bad_row = bytes.clone();
        let first_row = 20 + 16 * 4;
        bad_row[first_row..first_row + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        let mut r = LogitsReader::from_reader(
            Path::new("base.kld"),
            std::io::Cursor::new(&bad_row),
            bad_row.len() as u64,
        )
        .unwrap();
        let err = r.read_chunk(&mut Vec::new()).unwrap_err().to_string();
        assert!(
            err.contains("base.kld") && err.contains("chunk 1, row 0"),
            "{err}"
        );
    }

    #[test]
    fn writer_output_reads_back_and_unfinished_files_vanish() {
        let (bytes, tokens, rows) = sample(8, 5, 2);
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("out.kld");
        let mut w = LogitsWriter::create(&path).unwrap();
        w.begin(8, 5, &tokens).unwrap();
        w.write_rows(&rows[..rows.len() / 2]).unwrap();
        w.write_rows(&rows[rows.len() / 2..]).unwrap();
        assert_eq!(w.finish().unwrap(), bytes.len() as u64);
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        let mut r = LogitsReader::open(&path).unwrap();
        let mut got = Vec::new();
        r.read_chunk(&mut got).unwrap();
        assert_eq!(got, rows[..rows.len() / 2]);
        // A writer that misses rows refuses to finish and leaves no file.
        let short = d.path().join("short.kld");
        let mut w = LogitsWriter::create(&short).unwrap();
        w.begin(8, 5, &tokens).unwrap();
        w.write_rows(&rows[..rows.len() / 2]).unwrap();
        assert!(w.finish().unwrap_err().to_string().contains("3 of 6 rows"));
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
