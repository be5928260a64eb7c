//! Lookup grids of the IQ1/IQ2/IQ3 families (data from ggml).
