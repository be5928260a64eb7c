//! How a tensor's stored bytes become the values it presents: row order (llama.cpp's q/k head
//! permutation of Hugging Face rows) and element-wise transforms (Gemma's `+ 1` norms). A leaf
//! module: the architecture tables, the store and the writers all name these.

use crate::gguf::GgmlType;

/// How stored rows map to the rows the tensor presents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowOrder {
    AsStored,
    /// llama.cpp's q/k head permutation of Hugging Face rows (`convert_hf_to_gguf.py`'s
    /// `permute`): output row `(h, i, j)` of a `(n_head, rows/n_head/2, 2)` grid is stored row
    /// `(h, j, i)` of the `(n_head, 2, rows/n_head/2)` grid.
    HeadPermute {
        n_head: usize,
    },
}

impl RowOrder {
    /// The stored row holding presented row `row` of a tensor with `n_rows` rows.
    pub fn stored_row(self, row: usize, n_rows: usize) -> usize {
        match self {
            RowOrder::AsStored => row,
            RowOrder::HeadPermute { n_head } => {
                let half = n_rows / n_head / 2;
                let (h, rest) = (row / (2 * half), row % (2 * half));
                let (i, j) = (rest / 2, rest % 2);
                h * 2 * half + j * half + i
            }
        }
    }

    /// The presented row that stored row `stored` holds: the inverse of `stored_row`.
    pub fn presented_row(self, stored: usize, n_rows: usize) -> usize {
        match self {
            RowOrder::AsStored => stored,
            RowOrder::HeadPermute { n_head } => {
                let half = n_rows / n_head / 2;
                let (h, rest) = (stored / (2 * half), stored % (2 * half));
                let (j, i) = (rest / half, rest % half);
                h * 2 * half + 2 * i + j
            }
        }
    }
}

/// An element-wise change applied to a tensor's values as its rows are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transform {
    None,
    /// `x + 1` (Gemma's RMS norm weights, which llama.cpp's converter stores shifted). The sum
    /// is taken in the stored precision where that is what `convert_hf_to_gguf.py` does (torch
    /// adds in f16 for an F16 tensor, in f32 after widening for BF16 and F32).
    AddOne,
}

impl Transform {
    /// Apply to `values` read from bytes of type `stored`.
    pub fn apply_to(self, stored: GgmlType, values: &mut [f32]) {
        match self {
            Transform::None => {}
            Transform::AddOne if stored == GgmlType::F16 => {
                for v in values {
                    *v = half::f16::from_f32(*v + 1.0).to_f32();
                }
            }
            Transform::AddOne => {
                for v in values {
                    *v += 1.0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presented_row_undoes_stored_row() {
        for (n_head, n_rows) in [(1, 2), (2, 8), (4, 64), (3, 48)] {
            let order = RowOrder::HeadPermute { n_head };
            let stored: Vec<usize> = (0..n_rows).map(|r| order.stored_row(r, n_rows)).collect();
            let mut sorted = stored.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..n_rows).collect::<Vec<_>>(), "a permutation");
            for (r, &s) in stored.iter().enumerate() {
                assert_eq!(order.presented_row(s, n_rows), r, "{n_head} heads, row {r}");
            }
        }
    }
}
