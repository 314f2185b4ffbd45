//! Building blocks: encoders (ResNet family, ConvNet), MLP heads, BatchNorm.

pub mod batchnorm;
pub mod encoder;
pub mod fused;
pub mod fused_linear;
pub mod fused_loss;
pub mod init;
pub mod mlp;
pub mod representation;
pub mod transformer;
pub mod vae_nets;

pub use batchnorm::BatchNorm;
pub use encoder::{Encoder, EncoderConfig};
pub use mlp::Mlp;
pub use representation::Representation;
