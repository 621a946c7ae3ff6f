//! What every source shares: options, the dataset trait, and the driver that streams a
//! dataset epoch by epoch in a seeded order.

use std::sync::{Arc, OnceLock};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
pub use simclr_core::data::{DataError, Dataset, ItemError, LabelledData, Sample, Split};
use simclr_core::rng::{Rng, stream};
use simclr_core::{Image, Message, SampleId, Source, StageContext, StageError};

/// What to do with an item that cannot be read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Stop the run with an error naming the item.
    #[default]
    Fail,
    /// Count it, name it in the run summary, and go on.
    Skip,
}

/// Options shared by every source: the fields `source_config!` appends to each kind's
/// parameters, gathered for the driver.
#[derive(Clone, Debug)]
pub struct SourceOptions {
    /// Passes over the dataset.
    pub epochs: u32,
    /// Shuffle the order in every epoch (seeded by the definition's seed and the epoch).
    pub shuffle: bool,
    /// Use only the first `limit` items of the dataset.
    pub limit: Option<u64>,
    /// `fail` stops the run at an unreadable item; `skip` counts it and goes on.
    pub on_error: OnError,
}

impl Default for SourceOptions {
    fn default() -> Self {
        Self {
            epochs: default_epochs(),
            shuffle: default_shuffle(),
            limit: None,
            on_error: OnError::Fail,
        }
    }
}

/// How a source orders its items in each shuffled epoch.
#[derive(Clone, Debug, Default)]
pub enum Order {
    /// A seeded permutation of every item (random access: any item is as cheap as any other).
    #[default]
    Permutation,
    /// Items stored in shards (`counts[s]` items each, numbered in shard order): the shards in
    /// a seeded order, read in turn through a seeded shuffle buffer of `buffer` items
    /// (WebDataset's `shuffle(n)`), so reads stay within a few shards at a time and memory
    /// follows the buffer, not the dataset.
    Shards {
        /// Items per shard.
        counts: Arc<[u64]>,
        /// Items in the shuffle buffer (0 or 1: each shard in its own order).
        buffer: usize,
    },
}

/// The stream of item numbers of one epoch under [`Order::Shards`].
struct ShardStream {
    epoch: u32,
    /// Position of the next item [`ShardStream::next`] gives.
    next_pos: u64,
    order: Vec<usize>,
    starts: Vec<u64>,
    counts: Vec<u64>,
    shard: usize,
    within: u64,
    buffer: Vec<u64>,
    capacity: usize,
    rng: Rng,
}

impl ShardStream {
    /// Epoch `epoch`'s stream over the first `n` items of shards of `counts` items.
    fn new(seed: u64, epoch: u32, counts: &[u64], n: u64, capacity: usize) -> Self {
        let mut left = n;
        let mut starts = Vec::with_capacity(counts.len());
        let mut used = Vec::with_capacity(counts.len());
        let mut start = 0;
        for &c in counts {
            starts.push(start);
            start += c;
            used.push(c.min(left));
            left -= c.min(left);
        }
        let mut order: Vec<usize> = (0..counts.len()).collect();
        Rng::from_key(&[seed, u64::from(epoch), stream::SHUFFLE, 1]).shuffle(&mut order);
        Self {
            epoch,
            next_pos: 0,
            order,
            starts,
            counts: used,
            shard: 0,
            within: 0,
            buffer: Vec::with_capacity(capacity.clamp(1, 1 << 20)),
            capacity: capacity.max(1),
            rng: Rng::from_key(&[seed, u64::from(epoch), stream::SHUFFLE, 2]),
        }
    }

    /// The next item in shard order.
    fn pull(&mut self) -> Option<u64> {
        while let Some(&s) = self.order.get(self.shard) {
            if self.within < self.counts[s] {
                self.within += 1;
                return Some(self.starts[s] + self.within - 1);
            }
            self.shard += 1;
            self.within = 0;
        }
        None
    }

    /// The next item of the epoch: the buffer filled, then one of its items drawn.
    fn next(&mut self) -> Option<u64> {
        while self.buffer.len() < self.capacity {
            match self.pull() {
                Some(v) => self.buffer.push(v),
                None => break,
            }
        }
        if self.buffer.is_empty() {
            return None;
        }
        let j = self.rng.below(self.buffer.len() as u64) as usize;
        self.next_pos += 1;
        Some(self.buffer.swap_remove(j))
    }
}

/// Loads a dataset once for all of a stage's workers (on the first worker's `on_start`).
pub type SharedDataset = Arc<OnceLock<Result<Arc<dyn Dataset>, Arc<DataError>>>>;

/// Streams a dataset: worker `w` of `n` produces stream positions `w, w + n, ...` over
/// `epochs × len` positions; position `p` of epoch `e` is item `perm_e[p]`. On rank `r` of a
/// run over `W` ranks, the rank owns the positions `≡ r (mod W)` and its worker `w` produces
/// `r + W·w, r + W·(w + n), ...`: every run of `W·b` consecutive positions (a global batch of
/// `b` per rank) holds exactly `b` of each rank's, so the ranks' `k`-th local batches together
/// are the one-process run's `k`-th batch.
pub struct DatasetSource {
    shared: SharedDataset,
    load: Arc<dyn Fn() -> Result<Arc<dyn Dataset>, DataError> + Send + Sync>,
    data: Option<Arc<dyn Dataset>>,
    options: SourceOptions,
    /// Items before `limit` (known at build time, for the progress bar).
    expected_len: u64,
    next: u64,
    step: u64,
    order: Option<(u32, Vec<u64>)>,
    /// How shuffled epochs are ordered.
    ordering: Order,
    /// The current epoch's stream under [`Order::Shards`].
    stream: Option<ShardStream>,
    /// Where a resumed run starts: (epoch, stream position within it).
    resume_at: Option<(u32, u64)>,
}

impl DatasetSource {
    /// A driver for worker `worker` of `workers` on rank `rank` of `ranks`. `load` opens the
    /// dataset; `expected_len` is its size as seen at build time.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shared: SharedDataset,
        load: Arc<dyn Fn() -> Result<Arc<dyn Dataset>, DataError> + Send + Sync>,
        options: SourceOptions,
        expected_len: u64,
        (worker, workers): (usize, usize),
        (rank, ranks): (usize, usize),
    ) -> Self {
        let ranks = ranks.max(1) as u64;
        Self {
            shared,
            load,
            data: None,
            options,
            expected_len,
            next: rank as u64 + ranks * worker as u64,
            step: ranks * workers.max(1) as u64,
            order: None,
            ordering: Order::Permutation,
            stream: None,
            resume_at: None,
        }
    }

    /// Order shuffled epochs by `order` instead of a permutation of every item.
    #[must_use]
    pub fn with_order(mut self, order: Order) -> Self {
        self.ordering = order;
        self
    }

    /// Start at stream position `position` of epoch `epoch` (a resumed run), instead of at
    /// the beginning. Worker `w` then produces positions `start + w, start + w + n, ...`.
    #[must_use]
    pub fn resuming_at(mut self, epoch: u32, position: u64) -> Self {
        self.resume_at = Some((epoch, position));
        self
    }

    fn used_len(&self, len: u64) -> u64 {
        self.options.limit.map_or(len, |l| l.min(len))
    }

    /// Item index at position `pos` of `epoch`.
    ///
    /// # Errors
    /// A dataset too large to hold its shuffled order in memory (8 bytes an item).
    fn index(&mut self, seed: u64, epoch: u32, pos: u64, n: u64) -> Result<u64, StageError> {
        if !self.options.shuffle {
            return Ok(pos);
        }
        if let Order::Shards { counts, buffer } = &self.ordering {
            if self
                .stream
                .as_ref()
                .is_none_or(|s| s.epoch != epoch || s.next_pos > pos)
            {
                self.stream = Some(ShardStream::new(seed, epoch, counts, n, *buffer));
            }
            let stream = self
                .stream
                .as_mut()
                .ok_or_else(|| StageError::msg("shard stream missing"))?;
            while let Some(item) = stream.next() {
                if stream.next_pos == pos + 1 {
                    return Ok(item);
                }
            }
            return Err(StageError::msg(format!(
                "position {pos} is past the {n} items of epoch {epoch}"
            )));
        }
        if self.order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            self.order = None;
            let mut perm: Vec<u64> = Vec::new();
            usize::try_from(n)
                .ok()
                .and_then(|len| perm.try_reserve_exact(len).ok())
                .ok_or_else(|| {
                    StageError::msg(format!(
                        "cannot shuffle {n} items: their order alone needs {} GB (set `shuffle: false`, or `limit:` the items)",
                        n.saturating_mul(8) / 1_000_000_000
                    ))
                })?;
            perm.extend(0..n);
            Rng::from_key(&[seed, u64::from(epoch), stream::SHUFFLE]).shuffle(&mut perm);
            self.order = Some((epoch, perm));
        }
        Ok(self
            .order
            .as_ref()
            .map_or(pos, |(_, perm)| perm[pos as usize]))
    }
}

impl Source for DatasetSource {
    fn on_start(&mut self, cx: &mut StageContext) -> Result<(), StageError> {
        let loaded = self.shared.get_or_init(|| (self.load)().map_err(Arc::new));
        match loaded {
            Ok(data) => {
                self.data = Some(data.clone());
                if cx.worker() == 0 {
                    for note in data.notes() {
                        cx.note(note);
                    }
                }
                if let Some((epoch, position)) = self.resume_at.take() {
                    let n = self.used_len(data.len());
                    self.next += u64::from(epoch) * n + position;
                }
                Ok(())
            }
            Err(e) => Err(DataError::Shared(e.clone()).into()),
        }
    }

    fn next(&mut self, cx: &mut StageContext) -> Result<Option<Message>, StageError> {
        let Some(data) = self.data.clone() else {
            return Err(StageError::msg("dataset not loaded (on_start did not run)"));
        };
        let n = self.used_len(data.len());
        let total = n * u64::from(self.options.epochs);
        loop {
            if self.next >= total || n == 0 {
                return Ok(None);
            }
            let position = self.next;
            self.next += self.step;
            let epoch = (position / n) as u32;
            let index = self.index(cx.seed(), epoch, position % n, n)?;
            match data.get(index) {
                Ok(s) => {
                    return Ok(Some(Message::Image(Image {
                        id: SampleId { epoch, index },
                        label: s.label,
                        width: s.width,
                        height: s.height,
                        channels: s.channels,
                        pixels: s.pixels,
                    })));
                }
                Err(e) if self.options.on_error == OnError::Skip => cx.skip(e.item, e.cause),
                Err(e) => {
                    return Err(StageError::msg(format!(
                        "{e} (set `on_error: skip` to skip unreadable items)"
                    )));
                }
            }
        }
    }

    fn len_hint(&self) -> Option<u64> {
        let total = self.used_len(self.expected_len) * u64::from(self.options.epochs);
        Some(total.saturating_sub(self.next).div_ceil(self.step))
    }
}

/// A factory of [`DatasetSource`] workers sharing one lazily loaded dataset. Publishes the
/// stream's length, epochs and `channels` and the source's labelled splits (for evaluation), and starts
/// where a resumed run left off.
pub fn factory(
    cx: &simclr_core::BuildContext<'_>,
    options: SourceOptions,
    expected_len: u64,
    channels: usize,
    labelled: Arc<dyn LabelledData>,
    load: impl Fn() -> Result<Arc<dyn Dataset>, DataError> + Send + Sync + 'static,
) -> simclr_core::StageFactory {
    factory_ordered(
        cx,
        options,
        expected_len,
        channels,
        labelled,
        Order::Permutation,
        load,
    )
}

/// [`factory`] with shuffled epochs in `order`.
pub fn factory_ordered(
    cx: &simclr_core::BuildContext<'_>,
    options: SourceOptions,
    expected_len: u64,
    channels: usize,
    labelled: Arc<dyn LabelledData>,
    order: Order,
    load: impl Fn() -> Result<Arc<dyn Dataset>, DataError> + Send + Sync + 'static,
) -> simclr_core::StageFactory {
    let shared: SharedDataset = Arc::new(OnceLock::new());
    let load: Arc<dyn Fn() -> Result<Arc<dyn Dataset>, DataError> + Send + Sync> = Arc::new(load);
    let used = options.limit.map_or(expected_len, |l| l.min(expected_len));
    cx.publish(simclr_core::StreamFacts {
        items_per_epoch: Some(used),
        epochs: Some(options.epochs),
        channels: Some(channels),
        labelled: Some(labelled),
        ..simclr_core::StreamFacts::default()
    });
    let resume = cx.resume.map(|r| (r.epoch, r.position));
    let workers = cx.workers;
    let ranks = cx
        .extension::<simclr_dist::World>()
        .map_or((0, 1), |w| (w.rank(), w.size()));
    simclr_core::StageFactory::source(move |worker| {
        let source = DatasetSource::new(
            shared.clone(),
            load.clone(),
            options.clone(),
            expected_len,
            (worker, workers),
            ranks,
        )
        .with_order(order.clone());
        match resume {
            Some((epoch, position)) => source.resuming_at(epoch, position),
            None => source,
        }
    })
}

/// Declares a source's parameter struct with the shared [`SourceOptions`] fields appended
/// (serde's `flatten` cannot be combined with `deny_unknown_fields`).
#[macro_export]
macro_rules! source_config {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
            /// Passes over the dataset.
            #[serde(default = "crate::common::default_epochs")]
            pub epochs: u32,
            /// Shuffle the order in every epoch (seeded by the definition's seed and the epoch).
            #[serde(default = "crate::common::default_shuffle")]
            pub shuffle: bool,
            /// Use only the first `limit` items of the dataset.
            #[serde(default)]
            pub limit: Option<u64>,
            /// `fail` stops the run at an unreadable item; `skip` counts it, names it in the run
            /// summary and goes on.
            #[serde(default)]
            pub on_error: $crate::common::OnError,
        }

        impl $name {
            /// The options every source shares.
            pub fn source_options(&self) -> $crate::common::SourceOptions {
                $crate::common::SourceOptions {
                    epochs: self.epochs,
                    shuffle: self.shuffle,
                    limit: self.limit,
                    on_error: self.on_error,
                }
            }
        }
    };
}

/// `true`, for `#[serde(default = ...)]`.
pub fn default_true() -> bool {
    true
}

/// 3 (RGB), the default `channels` of the sources that decode image files.
pub fn default_channels() -> u8 {
    3
}

/// `channels` must be 1 or 3; `Err((field, message, help))` otherwise.
pub fn check_channels(channels: u8) -> Result<(), (&'static str, String, &'static str)> {
    if channels == 1 || channels == 3 {
        return Ok(());
    }
    Err((
        "channels",
        format!("`channels` must be 1 or 3, found {channels}"),
        "1 decodes to gray, 3 to RGB",
    ))
}

/// A decoded image file as a sample of `channels` channels (converted: gray or RGB).
pub fn sample_from(decoded: image::DynamicImage, channels: u8, label: Option<u32>) -> Sample {
    let (width, height) = (decoded.width(), decoded.height());
    let pixels: Vec<u8> = if channels == 1 {
        decoded.into_luma8().into_raw()
    } else {
        decoded.into_rgb8().into_raw()
    };
    Sample {
        width,
        height,
        channels,
        pixels: Arc::from(pixels),
        label,
    }
}

/// Default `epochs`.
pub fn default_epochs() -> u32 {
    1
}

/// Default `shuffle`.
pub fn default_shuffle() -> bool {
    true
}

/// Check the shared options; `Err((field, message, help))` on a bad value.
pub fn check_options(options: &SourceOptions) -> Result<(), (&'static str, String, &'static str)> {
    if options.epochs == 0 {
        return Err((
            "epochs",
            "`epochs` must be at least 1".into(),
            "one epoch is one pass over the dataset",
        ));
    }
    if options.limit == Some(0) {
        return Err((
            "limit",
            "`limit` must be at least 1".into(),
            "leave `limit` out to use the whole dataset",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Numbers(u64);

    impl Dataset for Numbers {
        fn len(&self) -> u64 {
            self.0
        }
        fn get(&self, index: u64) -> Result<Sample, ItemError> {
            if index == 3 {
                return Err(ItemError {
                    item: "item 3".into(),
                    cause: "unreadable".into(),
                });
            }
            Ok(Sample {
                width: 1,
                height: 1,
                channels: 1,
                pixels: Arc::from(vec![index as u8]),
                label: Some(index as u32),
            })
        }
    }

    fn drain(options: SourceOptions, workers: usize) -> (Vec<(u32, u64)>, u64) {
        drain_rank(options, workers, (0, 1))
    }

    fn drain_rank(
        options: SourceOptions,
        workers: usize,
        ranks: (usize, usize),
    ) -> (Vec<(u32, u64)>, u64) {
        let mut out = Vec::new();
        let mut skipped = 0;
        for w in 0..workers {
            let load: Arc<dyn Fn() -> Result<Arc<dyn Dataset>, DataError> + Send + Sync> =
                Arc::new(|| Ok(Arc::new(Numbers(10)) as Arc<dyn Dataset>));
            let mut src = DatasetSource::new(
                Arc::new(OnceLock::new()),
                load,
                options.clone(),
                10,
                (w, workers),
                ranks,
            );
            let mut cx = StageContext::for_test("images");
            src.on_start(&mut cx).expect("loads");
            while let Some(Message::Image(img)) = src.next(&mut cx).expect("no failure") {
                out.push((img.id.epoch, img.id.index));
            }
            skipped += cx.log().skipped();
        }
        (out, skipped)
    }

    #[test]
    fn epochs_are_shuffled_differently_and_cover_the_dataset() {
        let options = SourceOptions {
            epochs: 2,
            on_error: OnError::Skip,
            ..SourceOptions::default()
        };
        let (items, skipped) = drain(options, 1);
        assert_eq!(skipped, 2, "item 3 skipped in each epoch");
        let e0: Vec<u64> = items
            .iter()
            .filter(|(e, _)| *e == 0)
            .map(|(_, i)| *i)
            .collect();
        let e1: Vec<u64> = items
            .iter()
            .filter(|(e, _)| *e == 1)
            .map(|(_, i)| *i)
            .collect();
        assert_ne!(e0, e1, "each epoch has its own order");
        let mut sorted = e0.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![0, 1, 2, 4, 5, 6, 7, 8, 9]);
    }

    #[test]
    fn workers_split_positions_and_limit_applies_before_shuffle() {
        let options = SourceOptions {
            limit: Some(6),
            on_error: OnError::Skip,
            ..SourceOptions::default()
        };
        let (mut items, _) = drain(options.clone(), 3);
        items.sort_unstable();
        assert_eq!(items, vec![(0, 0), (0, 1), (0, 2), (0, 4), (0, 5)]);
        let (one, _) = drain(options, 1);
        assert_eq!(one.len(), 5);
    }

    #[test]
    fn ranks_interleave_into_the_one_process_stream_across_epochs() {
        // 3 items (odd, so epochs do not split evenly between 2 ranks), 3 epochs, shuffled.
        let options = SourceOptions {
            epochs: 3,
            limit: Some(3),
            ..SourceOptions::default()
        };
        let (one, _) = drain(options.clone(), 1);
        let (r0, _) = drain_rank(options.clone(), 1, (0, 2));
        let (r1, _) = drain_rank(options, 1, (1, 2));
        assert_eq!((r0.len(), r1.len()), (5, 4));
        let mut merged = Vec::new();
        for (i, &x) in r0.iter().enumerate() {
            merged.push(x);
            if let Some(&y) = r1.get(i) {
                merged.push(y);
            }
        }
        assert_eq!(merged, one, "rank r owns stream positions r, r + 2, ...");
    }

    #[test]
    fn fail_policy_names_the_item() {
        let load: Arc<dyn Fn() -> Result<Arc<dyn Dataset>, DataError> + Send + Sync> =
            Arc::new(|| Ok(Arc::new(Numbers(10)) as Arc<dyn Dataset>));
        let options = SourceOptions {
            shuffle: false,
            ..SourceOptions::default()
        };
        let mut src =
            DatasetSource::new(Arc::new(OnceLock::new()), load, options, 10, (0, 1), (0, 1));
        let mut cx = StageContext::for_test("images");
        src.on_start(&mut cx).expect("loads");
        for _ in 0..3 {
            src.next(&mut cx).expect("fine");
        }
        let err = src.next(&mut cx).expect_err("item 3");
        assert_eq!(
            err.to_string(),
            "item 3: unreadable (set `on_error: skip` to skip unreadable items)"
        );
    }
}
