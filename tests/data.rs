//! Sources and the data pipeline end to end: readers on small files written here, bad files
//! give clear errors or counted skips, and batches are byte-identical for any worker count.

use std::io::Write;
use std::path::{Path, PathBuf};

use simclr::config::graph::LoadOptions;
use simclr::config::load_str;
use simclr::core::Message;
use simclr::runtime::{self, RunOptions};
use simclr::source::cifar::{CifarDataset, Variant};
use simclr::source::common::Dataset;
use simclr::source::idx::IdxDataset;

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn idx_images(n: u32, rows: u32, cols: u32) -> Vec<u8> {
    let mut v = vec![0, 0, 8, 3];
    for d in [n, rows, cols] {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend((0..n * rows * cols).map(|i| (i % 251) as u8));
    v
}

fn idx_labels(n: u32) -> Vec<u8> {
    let mut v = vec![0, 0, 8, 1];
    v.extend_from_slice(&n.to_be_bytes());
    v.extend((0..n).map(|i| (i % 10) as u8));
    v
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).expect("gzip");
    enc.finish().expect("gzip")
}

fn run(text: &str) -> Result<simclr::runtime::Run, Box<simclr::runtime::Failure>> {
    let registry = simclr::registry::user();
    let graph = load_str(
        Path::new("test.yaml"),
        text,
        &registry,
        &LoadOptions::default(),
    )
    .unwrap_or_else(|d| panic!("{d}"));
    runtime::run(&graph, &RunOptions::default())
}

fn validate_error(text: &str) -> String {
    let registry = simclr::registry::user();
    match load_str(
        Path::new("test.yaml"),
        text,
        &registry,
        &LoadOptions::default(),
    ) {
        Ok(_) => panic!("expected an error"),
        Err(d) => d.to_string(),
    }
}

#[test]
fn idx_reader_reads_gzipped_and_raw_files_with_labels() {
    let dir = scratch("idx-ok");
    std::fs::write(
        dir.join("train-images-idx3-ubyte.gz"),
        gzip(&idx_images(5, 4, 3)),
    )
    .expect("write");
    std::fs::write(dir.join("train-labels-idx1-ubyte.gz"), gzip(&idx_labels(5))).expect("write");
    std::fs::write(dir.join("t10k-images-idx3-ubyte"), idx_images(2, 4, 3)).expect("write");
    let train = IdxDataset::load(
        &dir.join("train-images-idx3-ubyte.gz"),
        Some(&dir.join("train-labels-idx1-ubyte.gz")),
    )
    .expect("loads");
    assert_eq!(train.len(), 5);
    let item = train.get(2).expect("item");
    assert_eq!(
        (item.width, item.height, item.channels, item.label),
        (3, 4, 1, Some(2))
    );
    assert_eq!(
        item.pixels.to_vec(),
        (24..36).map(|i: u32| (i % 251) as u8).collect::<Vec<_>>()
    );
    // Through a definition: the folder and split resolve the file names.
    let text = format!(
        "name: idx\nstages:\n  images: {{ kind: idx, params: {{ path: {}, split: test, shuffle: false }} }}\n  drain: {{ kind: sink, inputs: [images], params: {{ expect: 2 }} }}\n",
        dir.display()
    );
    run(&text).unwrap_or_else(|f| panic!("{f}"));
}

#[test]
fn truncated_or_corrupt_idx_files_give_clear_errors() {
    let dir = scratch("idx-bad");
    let mut truncated = idx_images(5, 4, 3);
    truncated.truncate(40);
    std::fs::write(dir.join("short.idx"), &truncated).expect("write");
    let err = IdxDataset::load(&dir.join("short.idx"), None)
        .expect_err("truncated")
        .to_string();
    assert!(
        err.contains(
            "short.idx: truncated: the header promises 60 bytes of data, the file holds 24"
        ),
        "{err}"
    );
    std::fs::write(dir.join("junk.idx"), b"PK\x03\x04not idx at all").expect("write");
    let err = IdxDataset::load(&dir.join("junk.idx"), None)
        .expect_err("junk")
        .to_string();
    assert!(err.contains("not an IDX file"), "{err}");
    let mut corrupt = gzip(&idx_images(5, 4, 3));
    let n = corrupt.len();
    corrupt[n / 2] ^= 0xff;
    corrupt.truncate(n - 6);
    std::fs::write(dir.join("corrupt.idx.gz"), &corrupt).expect("write");
    let err = IdxDataset::load(&dir.join("corrupt.idx.gz"), None)
        .expect_err("corrupt gzip")
        .to_string();
    assert!(err.contains("corrupt.idx.gz"), "{err}");
    std::fs::write(dir.join("labels.idx"), idx_labels(4)).expect("write");
    std::fs::write(dir.join("images.idx"), idx_images(5, 4, 3)).expect("write");
    let err = IdxDataset::load(&dir.join("images.idx"), Some(&dir.join("labels.idx")))
        .expect_err("count mismatch")
        .to_string();
    assert!(err.contains("4 labels for 5 images"), "{err}");
    // In a definition, a bad file is reported at `path` before anything runs.
    let text = format!(
        "name: idx\nstages:\n  images: {{ kind: idx, params: {{ path: {} }} }}\n  drain: {{ kind: sink, inputs: [images] }}\n",
        dir.join("junk.idx").display()
    );
    let report = validate_error(&text);
    assert!(
        report.contains("test.yaml:3:40") && report.contains("not an IDX file"),
        "{report}"
    );
    let text = "name: idx\nstages:\n  images: { kind: idx, params: { path: /no/such/folder } }\n  drain: { kind: sink, inputs: [images] }\n";
    let report = validate_error(text);
    assert!(
        report.contains("/no/such/folder does not exist")
            && report.contains("apt-get install -y dataset-fashion-mnist"),
        "{report}"
    );
}

fn cifar_record(label: u8, seed: u8) -> Vec<u8> {
    let mut r = vec![label];
    r.extend((0..3072u32).map(|i| (i as u8).wrapping_mul(seed)));
    r
}

#[test]
fn cifar_reader_converts_planes_and_rejects_truncated_files() {
    let dir = scratch("cifar");
    let mut batch = cifar_record(3, 1);
    batch.extend(cifar_record(7, 3));
    std::fs::write(dir.join("test_batch.bin"), &batch).expect("write");
    let data =
        CifarDataset::load(Variant::Cifar10, &[(dir.join("test_batch.bin"), 2)]).expect("loads");
    assert_eq!(data.len(), 2);
    let item = data.get(1).expect("item");
    assert_eq!(item.label, Some(7));
    // Pixel (0, 1) is element 1 of each plane: red 1*3, green (1024+1)*3, blue (2048+1)*3 mod 256.
    assert_eq!(
        &item.pixels[3..6],
        &[
            3u8,
            ((1025u32 * 3) % 256) as u8,
            ((2049u32 * 3) % 256) as u8
        ]
    );
    let text = format!(
        "name: c\nstages:\n  images: {{ kind: cifar, params: {{ path: {}, split: test }} }}\n  drain: {{ kind: sink, inputs: [images], params: {{ expect: 2 }} }}\n",
        dir.display()
    );
    run(&text).unwrap_or_else(|f| panic!("{f}"));
    batch.truncate(3073 + 100);
    std::fs::write(dir.join("test_batch.bin"), &batch).expect("write");
    let report = validate_error(&text);
    assert!(
        report.contains("3173 bytes is not a whole number of 3073-byte CIFAR-10 records"),
        "{report}"
    );
}

#[test]
fn unreadable_images_are_skipped_and_counted_or_fail_naming_the_file() {
    let dir = scratch("folder");
    for (class, n) in [("cats", 3), ("dogs", 2)] {
        std::fs::create_dir_all(dir.join(class)).expect("mkdir");
        for i in 0..n {
            let img = image::RgbImage::from_fn(6, 5, |x, y| {
                image::Rgb([x as u8 * 40, y as u8 * 50, i as u8 * 60])
            });
            img.save(dir.join(class).join(format!("{i}.png")))
                .expect("png");
        }
    }
    std::fs::write(
        dir.join("dogs").join("broken.jpg"),
        b"\xff\xd8\xff\xe0 this is not a jpeg",
    )
    .expect("write");
    let text = |policy: &str| {
        format!(
            "name: f\nstages:\n  images: {{ kind: image_folder, workers: 2, params: {{ path: {}, on_error: {policy} }} }}\n  drain: {{ kind: sink, inputs: [images], params: {{ expect: 5 }} }}\n",
            dir.display()
        )
    };
    let run_ok = run(&text("skip")).unwrap_or_else(|f| panic!("{f}"));
    let images = &run_ok.report.stages[0];
    assert_eq!(images.skipped, 1);
    assert!(
        images.skipped_examples[0].contains("broken.jpg"),
        "{:?}",
        images.skipped_examples
    );
    assert!(
        run_ok
            .report
            .to_string()
            .contains("skipped: `images` skipped 1 item(s)"),
        "{}",
        run_ok.report
    );
    let failure = run(&text("fail")).expect_err("fails");
    let message = failure.to_string();
    assert!(
        message.contains("stage `images`")
            && message.contains("broken.jpg")
            && message.contains("on_error: skip"),
        "{message}"
    );
}

#[test]
fn the_run_report_says_how_a_folder_was_listed_and_a_bad_index_is_refused() {
    let dir = scratch("listed");
    let root = dir.join("photos");
    std::fs::create_dir_all(root.join("cats")).expect("mkdir");
    for i in 0..3 {
        image::RgbImage::from_pixel(4, 4, image::Rgb([i * 80, 0, 0]))
            .save(root.join("cats").join(format!("{i}.png")))
            .expect("png");
    }
    // Folders changed an hour ago: settled, so the listing may be kept.
    let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for d in [root.join("cats"), root.clone()] {
        std::fs::File::open(&d)
            .and_then(|f| f.set_modified(hour_ago))
            .expect("set the folder's time");
    }
    let text = |index: &str| {
        format!(
            "name: f\nstages:\n  images: {{ kind: image_folder, params: {{ path: {}{index} }} }}\n  drain: {{ kind: sink, inputs: [images], params: {{ expect: 3 }} }}\n",
            root.display()
        )
    };
    let note = |text: &str| {
        let done = run(text).unwrap_or_else(|f| panic!("{f}"));
        done.report.stages[0].notes.join("\n")
    };
    let first = note(&text(""));
    assert!(
        first.contains("3 images listed")
            && first.contains("by walking the folder; the listing is kept in")
            && first.contains(".photos.simclr-index"),
        "{first}"
    );
    let second = note(&text(""));
    assert!(
        second.contains("3 images listed") && second.contains("from the index"),
        "{second}"
    );
    let named = dir.join("listing.idx");
    let third = note(&text(&format!(", index: {}", named.display())));
    assert!(third.contains("listing.idx") && named.exists(), "{third}");
    // An index no one can write (its folder is a file): refused when the definition is checked.
    std::fs::write(dir.join("blocker"), b"").expect("file");
    let message = validate_error(&text(&format!(
        ", index: {}",
        dir.join("blocker/x.idx").display()
    )));
    assert!(
        message.contains("index")
            && message.contains("cannot write the listing's index")
            && message.contains("blocker/x.idx"),
        "{message}"
    );
}

fn digest(report: &simclr::runtime::RunReport) -> String {
    report
        .stages
        .last()
        .and_then(|s| s.notes.first())
        .cloned()
        .expect("digest note")
}

#[test]
fn batches_are_byte_identical_for_any_worker_count() {
    let text = |views: usize, source: usize, chunk: usize| {
        format!(
            "name: det\nseed: 9\nstages:
  images: {{ kind: synthetic, workers: {source}, params: {{ count: 300, size: 24, epochs: 2 }} }}
  views:
    kind: views
    inputs: [images]
    workers: {views}
    params:
      chunk: {chunk}
      t: [{{ random_resized_crop: {{ size: 20 }} }}, horizontal_flip, {{ random_apply: {{ p: 0.8, transforms: [{{ color_jitter: {{ brightness: 0.4, contrast: 0.4, saturation: 0.4, hue: 0.1 }} }}] }} }}, {{ random_grayscale: {{ p: 0.2 }} }}]
      t_prime: [{{ random_resized_crop: {{ size: 20 }} }}, {{ gaussian_blur: {{ kernel_size: 3 }} }}, {{ solarize: {{ p: 0.2 }} }}]
  batches: {{ kind: batch, inputs: [views], params: {{ batch_size: 64 }} }}
  drain: {{ kind: sink, inputs: [batches], params: {{ digest: true, expect: 8 }} }}
"
        )
    };
    let reference = digest(
        &run(&text(1, 1, 64))
            .unwrap_or_else(|f| panic!("{f}"))
            .report,
    );
    assert!(reference.ends_with("over 8 messages"), "{reference}");
    for (views, source, chunk) in [(2, 1, 64), (4, 1, 7), (4, 3, 64), (2, 2, 1)] {
        let got = digest(
            &run(&text(views, source, chunk))
                .unwrap_or_else(|f| panic!("{f}"))
                .report,
        );
        assert_eq!(
            got, reference,
            "views workers {views}, source workers {source}, chunk {chunk}"
        );
    }
    // A different seed gives different batches: the digest is not vacuous.
    let other =
        run(&text(1, 1, 64).replace("seed: 9", "seed: 10")).unwrap_or_else(|f| panic!("{f}"));
    assert_ne!(digest(&other.report), reference);
}

#[test]
fn batches_hold_pairs_at_2k_and_2k_plus_1() {
    use simclr::augment::batch::{BatchConfig, Batcher};
    use simclr::core::{Outputs, SampleId, Stage, StageContext, TestOutputs, ViewPair};
    let mut batcher = Batcher::new(BatchConfig {
        batch_size: 2,
        drop_last: true,
    });
    let mut out = TestOutputs::default();
    let mut cx = StageContext::for_test("batches");
    for k in 0..5u64 {
        let pair = ViewPair {
            id: SampleId { epoch: 0, index: k },
            label: None,
            shape: [1, 1, 2],
            first: vec![k as f32, 0.5].into(),
            second: vec![-(k as f32), 0.25].into(),
        };
        let mut o = Outputs::new(&mut out, Some(simclr::core::PortType::Batches));
        batcher
            .process(Message::ViewPair(pair), &mut o, &mut cx)
            .expect("collates");
    }
    let mut o = Outputs::new(&mut out, Some(simclr::core::PortType::Batches));
    batcher.on_finish(&mut o, &mut cx).expect("finishes");
    assert_eq!(out.messages.len(), 2, "the fifth sample is dropped");
    let Message::Batch(b) = &out.messages[1] else {
        panic!("batch")
    };
    assert_eq!(b.shape, [4, 1, 1, 2]);
    assert_eq!(b.step, 1);
    assert_eq!(
        b.data.to_vec(),
        vec![2.0, 0.5, -2.0, 0.25, 3.0, 0.5, -3.0, 0.25]
    );
    assert_eq!(
        cx.log().notes(),
        vec!["dropped the last 1 samples (incomplete batch)".to_owned()]
    );
}
