//! tramway facade
pub use tramway_jit as jit;
pub use tramway_runtime as runtime;
