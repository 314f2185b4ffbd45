//! Building blocks: encoders (ResNet family, ConvNet), MLP heads, BatchNorm.

pub mod batchnorm;
pub mod bf16_gemm;
pub mod encoder;
pub mod fused;
pub mod fused_linear;
pub mod fused_loss;
pub mod init;
pub mod mlp;
pub mod op_times;
pub mod representation;
mod small_gemm;
pub mod transformer;
pub mod vae_nets;
mod winograd;

pub use batchnorm::BatchNorm;
pub use bf16_gemm::{matmul_precision, set_matmul_precision, MatmulPrecision};
pub use encoder::{Encoder, EncoderConfig};
pub use mlp::Mlp;
pub use representation::Representation;
