//! Batches of augmented views, computed on worker threads and prefetched.
//!
//! A batch is a pure function of `(seed, step)`: the epoch's shuffle comes from `(seed, epoch)`
//! and each view of each image from its own ChaCha8 stream keyed by
//! `(seed, epoch, image index, view index)`, so neither thread scheduling nor where a run resumes
//! changes a single value.

use super::augment::{augment_image, AugmentConfig};
use super::ImageDataset;
use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// One batch: `views[v]` holds view `v` of every image, `n * c * h * w` values (NCHW).
#[derive(Clone, Debug, PartialEq)]
pub struct ViewBatch {
    pub views: Vec<Vec<f32>>,
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// Dataset index of each image in the batch.
    pub indices: Vec<usize>,
    /// Labels of `indices`, if the dataset is labeled.
    pub labels: Option<Vec<u32>>,
}

/// Produces [`ViewBatch`]es from a dataset; cheap to clone (the dataset is shared).
#[derive(Clone)]
pub struct ViewLoader {
    dataset: Arc<ImageDataset>,
    views: Arc<Vec<AugmentConfig>>,
    batch_size: usize,
    out_hw: (usize, usize),
    seed: u64,
    drop_last: bool,
    /// The last epoch's permutation, to avoid reshuffling for every batch.
    perm_cache: Arc<Mutex<Option<EpochOrder>>>,
}

/// An epoch and its dataset order.
type EpochOrder = (usize, Arc<Vec<usize>>);

/// Marks the permutation stream, so that it never coincides with an image's view stream.
const PERMUTATION_STREAM: u64 = u64::MAX;

fn stream(seed: u64, epoch: usize, a: u64, b: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    for (i, v) in [seed, epoch as u64, a, b].into_iter().enumerate() {
        key[8 * i..8 * (i + 1)].copy_from_slice(&v.to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

impl ViewLoader {
    /// `views`: one AugmentConfig per view (2 for SimCLR/BYOL, 1 for VAE).
    pub fn new(
        dataset: Arc<ImageDataset>,
        views: Vec<AugmentConfig>,
        batch_size: usize,
        out_hw: (usize, usize),
        seed: u64,
        drop_last: bool,
    ) -> Result<Self> {
        if dataset.is_empty() {
            bail!("dataset {} is empty", dataset.name);
        }
        if dataset.images.len() != dataset.n * dataset.image_len() {
            bail!(
                "dataset {}: {} values for {} images of {}×{}×{}",
                dataset.name,
                dataset.images.len(),
                dataset.n,
                dataset.channels,
                dataset.height,
                dataset.width
            );
        }
        if views.is_empty() {
            bail!("at least one view is needed");
        }
        for (i, v) in views.iter().enumerate() {
            v.validate().with_context(|| format!("view {}", i + 1))?;
        }
        if batch_size == 0 {
            bail!("batch size must be at least 1");
        }
        if out_hw.0 == 0 || out_hw.1 == 0 {
            bail!(
                "output size must be at least 1×1, got {}×{}",
                out_hw.0,
                out_hw.1
            );
        }
        if drop_last && dataset.len() < batch_size {
            bail!(
                "batch size {batch_size} is larger than the dataset ({} images) and the last \
                 partial batch is dropped, so an epoch would have no batch",
                dataset.len()
            );
        }
        Ok(ViewLoader {
            dataset,
            views: Arc::new(views),
            batch_size,
            out_hw,
            seed,
            drop_last,
            perm_cache: Arc::new(Mutex::new(None)),
        })
    }

    pub fn dataset(&self) -> &Arc<ImageDataset> {
        &self.dataset
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Full batches per epoch, plus a final partial one unless `drop_last`.
    pub fn batches_per_epoch(&self) -> usize {
        let n = self.dataset.len();
        if self.drop_last {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }

    /// The dataset order for `epoch`.
    fn permutation(&self, epoch: usize) -> Arc<Vec<usize>> {
        let mut cache = self.perm_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((e, p)) = cache.as_ref() {
            if *e == epoch {
                return p.clone();
            }
        }
        let mut perm: Vec<usize> = (0..self.dataset.len()).collect();
        perm.shuffle(&mut stream(
            self.seed,
            epoch,
            PERMUTATION_STREAM,
            PERMUTATION_STREAM,
        ));
        let perm = Arc::new(perm);
        *cache = Some((epoch, perm.clone()));
        perm
    }

    /// The batch for a global step is a pure function of (seed, step): epoch = step / batches_per_epoch, the
    /// epoch's permutation comes from (seed, epoch), each image's view RNG from (seed, epoch, image index, view index).
    /// This is what makes resume exact.
    pub fn batch(&self, step: usize) -> ViewBatch {
        let bpe = self.batches_per_epoch();
        let (epoch, b) = (step / bpe, step % bpe);
        let perm = self.permutation(epoch);
        let start = b * self.batch_size;
        let indices = perm[start..(start + self.batch_size).min(perm.len())].to_vec();
        let ds = &*self.dataset;
        let (c, h, w) = (ds.channels, ds.height, ds.width);
        let (oh, ow) = self.out_hw;
        let il = c * oh * ow;
        let views = self
            .views
            .iter()
            .enumerate()
            .map(|(v, cfg)| {
                let mut buf = vec![0.0f32; indices.len() * il];
                buf.par_chunks_mut(il)
                    .zip(indices.par_iter())
                    .for_each(|(dst, &i)| {
                        let mut rng = stream(self.seed, epoch, i as u64, v as u64);
                        dst.copy_from_slice(&augment_image(
                            ds.image(i),
                            c,
                            h,
                            w,
                            oh,
                            ow,
                            cfg,
                            &mut rng,
                        ));
                    });
                buf
            })
            .collect();
        ViewBatch {
            views,
            n: indices.len(),
            c,
            h: oh,
            w: ow,
            labels: ds
                .labels
                .as_ref()
                .map(|l| indices.iter().map(|&i| l[i]).collect()),
            indices,
        }
    }

    /// Iterator over steps start..end; batches are produced on background threads (rayon inside a batch, and
    /// a producer thread that keeps `prefetch` batches ready in a bounded channel), in order.
    /// A `prefetch` of 0 is taken as 1.
    pub fn prefetch(&self, start: usize, end: usize, prefetch: usize) -> Prefetcher {
        let (tx, rx) = sync_channel(prefetch.max(1));
        let loader = self.clone();
        let handle = std::thread::Builder::new()
            .name("selfsup-prefetch".into())
            .spawn(move || {
                for step in start..end {
                    if tx.send(loader.batch(step)).is_err() {
                        break; // the Prefetcher was dropped
                    }
                }
            })
            .expect("spawning the prefetch thread");
        Prefetcher {
            rx: Some(rx),
            handle: Some(handle),
            remaining: end.saturating_sub(start),
        }
    }
}

/// Yields prefetched batches in step order; dropping it stops the producer thread.
pub struct Prefetcher {
    rx: Option<Receiver<ViewBatch>>,
    handle: Option<JoinHandle<()>>,
    remaining: usize,
}

impl Iterator for Prefetcher {
    type Item = ViewBatch;

    fn next(&mut self) -> Option<ViewBatch> {
        if self.remaining == 0 {
            return None;
        }
        match self.rx.as_ref()?.recv() {
            Ok(b) => {
                self.remaining -= 1;
                Some(b)
            }
            Err(_) => {
                // The producer ended early: it can only have panicked; surface that panic.
                self.remaining = 0;
                if let Some(h) = self.handle.take() {
                    if let Err(p) = h.join() {
                        std::panic::resume_unwind(p);
                    }
                }
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        drop(self.rx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
