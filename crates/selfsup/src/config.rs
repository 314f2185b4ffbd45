//! Run configuration: one TOML document per run, the same names for config keys and CLI flags.
//!
//! A flag `--lr 0.1` is the key `train.lr`; `--set train.lr=0.1` sets any key. Unknown keys are
//! errors that name the key.

use crate::data::augment::AugmentConfig;
use crate::methods::byol::ByolConfig;
use crate::methods::simclr::SimClrConfig;
use crate::methods::vae::VaeConfig;
use crate::nn::EncoderConfig;
use crate::train::TrainConfig;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Everything that defines a pretraining run. Saved as RUN_DIR/config.toml.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    /// simclr (byol and vae follow).
    pub method: String,
    /// Dataset spec: digits, fashion-mnist[:DIR], mnist:DIR, cifar10:DIR, folder:DIR.
    pub data: String,
    /// Resize every image to this square side when loading (folders default to 32; other
    /// datasets keep their native size unless it is set).
    #[serde(default)]
    pub image_size: Option<usize>,
    /// Skip undecodable images in folders (their count is printed) instead of failing.
    #[serde(default)]
    pub skip_bad_images: bool,
    /// Seed for initialization, data order and augmentations.
    #[serde(default)]
    pub seed: u64,
    pub encoder: EncoderConfig,
    #[serde(default)]
    pub simclr: SimClrConfig,
    #[serde(default)]
    pub byol: ByolConfig,
    #[serde(default)]
    pub vae: VaeConfig,
    /// Augmentation of the first view (of every view unless `augment2` is set).
    #[serde(default = "AugmentConfig::simclr")]
    pub augment: AugmentConfig,
    /// Augmentation of the second view (BYOL's asymmetric recipe).
    #[serde(default)]
    pub augment2: Option<AugmentConfig>,
    /// Collapse diagnostics (std, effective rank, alignment, uniformity, online kNN) at every
    /// evaluation (`train.eval_every`, default once per epoch).
    #[serde(default = "yes")]
    pub diagnostics: bool,
    /// End the run (with a checkpoint) when the diagnostics say the representation collapsed.
    #[serde(default)]
    pub stop_on_collapse: bool,
    #[serde(default)]
    pub train: TrainConfig,
}

impl PretrainConfig {
    /// Defaults for a method and dataset.
    pub fn new(method: &str, data: &str) -> Self {
        let (augment, augment2) = match method {
            "byol" => (
                AugmentConfig::byol_view1(),
                Some(AugmentConfig::byol_view2()),
            ),
            "vae" => (AugmentConfig::none(), None),
            _ => (AugmentConfig::simclr(), None),
        };
        Self {
            method: method.to_string(),
            data: data.to_string(),
            image_size: None,
            skip_bad_images: false,
            seed: 0,
            encoder: EncoderConfig::tiny(),
            simclr: SimClrConfig::default(),
            byol: ByolConfig::default(),
            vae: VaeConfig::default(),
            augment,
            augment2,
            diagnostics: true,
            stop_on_collapse: false,
            train: TrainConfig::default(),
        }
    }

    pub fn validate(&self) -> Result<()> {
        match self.method.as_str() {
            "simclr" => self.simclr.validate()?,
            "byol" => self.byol.validate()?,
            "vae" => self.vae.validate()?,
            m => bail!(
                "unknown method `{m}`: expected simclr, byol or vae (gpt and mlm take text data)"
            ),
        }
        self.encoder.validate()?;
        self.train.validate()?;
        if let Some(s) = self.image_size {
            anyhow::ensure!(s >= 4, "image_size must be at least 4, got {s}");
        }
        Ok(())
    }

    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }

    /// Parses a TOML document, applying `overrides` (`key.path=value`) first.
    pub fn from_toml(text: &str, origin: &str, overrides: &[(String, String)]) -> Result<Self> {
        let mut value: toml::Value =
            toml::from_str(text).with_context(|| format!("{origin}: invalid TOML"))?;
        for (k, v) in overrides {
            set_key(&mut value, k, v)?;
        }
        let cfg: Self = value
            .try_into()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("{origin}: {}", e.message()))?;
        cfg.validate().with_context(|| origin.to_string())?;
        Ok(cfg)
    }

    pub fn load(path: &Path, overrides: &[(String, String)]) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_toml(&text, &path.display().to_string(), overrides)
    }

    /// Defaults for (method, data) with overrides applied, validated.
    pub fn with_overrides(self, overrides: &[(String, String)]) -> Result<Self> {
        let text = self.to_toml()?;
        Self::from_toml(&text, "command-line flags", overrides)
    }
}

/// Sets `a.b.c = value` in a TOML tree; the value is parsed as a TOML literal (number, bool,
/// array, string), else taken as a string.
pub fn set_key(root: &mut toml::Value, key: &str, value: &str) -> Result<()> {
    let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let parts: Vec<&str> = key.split('.').collect();
    let mut cur = root;
    for (i, part) in parts.iter().enumerate() {
        let table = cur.as_table_mut().with_context(|| {
            format!(
                "cannot set `{key}`: `{}` is not a table",
                parts[..i].join(".")
            )
        })?;
        if i + 1 == parts.len() {
            table.insert(part.to_string(), parsed.clone());
            return Ok(());
        }
        cur = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    bail!("empty key")
}

/// Parses `key=value` from `--set`.
pub fn parse_set(s: &str) -> Result<(String, String)> {
    let (k, v) = s
        .split_once('=')
        .with_context(|| format!("--set expects key=value, got `{s}`"))?;
    Ok((k.trim().to_string(), v.trim().to_string()))
}

fn yes() -> bool {
    true
}
