//! The ggml tensor type table: ids as stored in GGUF, block sizes and bytes per block.
//!
//! Ids, block sizes and byte counts match ggml's `ggml_type_traits` (and the PyPI
//! `gguf` package's `GGML_QUANT_SIZES`); a test cross-checks every row.

use std::fmt;
use std::str::FromStr;

/// Which family file of `crate::quant` holds a type's kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// F32, F16, BF16, F64 and the integer types (`quant/float.rs`).
    Float,
    /// Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1 (`quant/legacy.rs`, weighted: `imatrix_legacy.rs`).
    Legacy,
    /// Q2_K..Q8_K (`quant/kquants.rs`).
    KQuant,
    Iq1,
    Iq2,
    Iq3,
    Iq4,
    Ternary,
    Mxfp4,
}

/// What smelt's quantizer for a type does with an importance matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quantizer {
    /// smelt reads the type but does not write it (as llama-quantize).
    None,
    /// Writes it; ignores importance weights (as ggml does for F16, BF16, Q8_0, TQ*).
    Plain,
    /// Writes it, with importance weights when given.
    Weighted,
    /// Writes it only with importance weights (ggml refuses otherwise).
    NeedsImatrix,
}

macro_rules! ggml_types {
    ($( $variant:ident = $id:literal, $block:literal, $bytes:literal, $family:ident, $quant:ident; )*) => {
        /// A ggml tensor element type.
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum GgmlType { $( $variant = $id, )* }

        impl GgmlType {
            /// Every type this table knows, in id order.
            pub const ALL: &'static [GgmlType] = &[ $( GgmlType::$variant, )* ];

            /// The type for a GGUF type id, or `None` for ids this build does not know.
            pub const fn from_id(id: u32) -> Option<GgmlType> {
                match id { $( $id => Some(GgmlType::$variant), )* _ => None }
            }

            /// ggml's name for the type (`Q4_K`, `BF16`, ...).
            pub const fn name(self) -> &'static str {
                match self { $( GgmlType::$variant => stringify!($variant), )* }
            }

            /// Elements per block.
            pub const fn block_size(self) -> usize {
                match self { $( GgmlType::$variant => $block, )* }
            }

            /// Bytes per block.
            pub const fn type_size(self) -> usize {
                match self { $( GgmlType::$variant => $bytes, )* }
            }

            /// The family file holding the type's kernels.
            pub const fn family(self) -> Family {
                match self { $( GgmlType::$variant => Family::$family, )* }
            }

            /// Whether and how smelt writes the type.
            pub const fn quantizer(self) -> Quantizer {
                match self { $( GgmlType::$variant => Quantizer::$quant, )* }
            }
        }
    };
}

// One row per type: GGUF id, elements per block, bytes per block, kernel family, quantizer.
// Adding a type = a row here + its kernels in the family file (which asserts its block size
// against this row at compile time) + a golden.
ggml_types! {
    F32 = 0, 1, 4, Float, Plain;
    F16 = 1, 1, 2, Float, Plain;
    Q4_0 = 2, 32, 18, Legacy, Weighted;
    Q4_1 = 3, 32, 20, Legacy, Weighted;
    Q5_0 = 6, 32, 22, Legacy, Weighted;
    Q5_1 = 7, 32, 24, Legacy, Weighted;
    Q8_0 = 8, 32, 34, Legacy, Plain;
    Q8_1 = 9, 32, 36, Legacy, None;
    Q2_K = 10, 256, 84, KQuant, Weighted;
    Q3_K = 11, 256, 110, KQuant, Weighted;
    Q4_K = 12, 256, 144, KQuant, Weighted;
    Q5_K = 13, 256, 176, KQuant, Weighted;
    Q6_K = 14, 256, 210, KQuant, Weighted;
    Q8_K = 15, 256, 292, KQuant, None;
    IQ2_XXS = 16, 256, 66, Iq2, NeedsImatrix;
    IQ2_XS = 17, 256, 74, Iq2, NeedsImatrix;
    IQ3_XXS = 18, 256, 98, Iq3, Weighted;
    IQ1_S = 19, 256, 50, Iq1, NeedsImatrix;
    IQ4_NL = 20, 32, 18, Iq4, Weighted;
    IQ3_S = 21, 256, 110, Iq3, Weighted;
    IQ2_S = 22, 256, 82, Iq2, Weighted;
    IQ4_XS = 23, 256, 136, Iq4, Weighted;
    I8 = 24, 1, 1, Float, None;
    I16 = 25, 1, 2, Float, None;
    I32 = 26, 1, 4, Float, None;
    I64 = 27, 1, 8, Float, None;
    F64 = 28, 1, 8, Float, None;
    IQ1_M = 29, 256, 56, Iq1, Weighted;
    BF16 = 30, 1, 2, Float, Plain;
    TQ1_0 = 34, 256, 54, Ternary, Plain;
    TQ2_0 = 35, 256, 66, Ternary, Plain;
    MXFP4 = 39, 32, 17, Mxfp4, None;
}

impl GgmlType {
    /// The GGUF type id.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// Bytes needed for `n_elements` values, or `None` when they do not fill whole blocks.
    pub fn bytes_for(self, n_elements: u64) -> Option<u64> {
        let block = self.block_size() as u64;
        (n_elements % block == 0).then(|| n_elements / block * self.type_size() as u64)
    }

    /// True for the block-quantized types (everything but plain floats and integers).
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// True when smelt can write the type.
    pub const fn can_quantize(self) -> bool {
        !matches!(self.quantizer(), Quantizer::None)
    }

    /// Bits per weight of this type.
    pub fn bits_per_weight(self) -> f64 {
        self.type_size() as f64 * 8.0 / self.block_size() as f64
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for GgmlType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        GgmlType::ALL
            .iter()
            .copied()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown ggml type `{s}`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_names_parse() {
        for &t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
            assert_eq!(t.name().parse::<GgmlType>().unwrap(), t);
            assert_eq!(t.name().to_lowercase().parse::<GgmlType>().unwrap(), t);
        }
        assert_eq!(GgmlType::from_id(4), None, "Q4_2 was removed from ggml");
        assert_eq!(GgmlType::from_id(1000), None);
    }

    #[test]
    fn byte_counts() {
        assert_eq!(GgmlType::Q4_K.bytes_for(4096), Some(16 * 144));
        assert_eq!(GgmlType::Q4_K.bytes_for(576), None);
        assert_eq!(GgmlType::F16.bytes_for(7), Some(14));
        assert!((GgmlType::Q4_0.bits_per_weight() - 4.5).abs() < 1e-12);
    }
}
