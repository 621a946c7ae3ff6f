//! Every shipped definition validates, and every stage kind's example validates and runs.

use std::path::Path;
use std::time::Duration;

use simclr::config::graph::LoadOptions;
use simclr::config::{load_file, load_str};
use simclr::runtime::{self, RunOptions};

#[test]
fn every_file_in_definitions_validates() {
    let registry = simclr::registry::user();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("definitions");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("definitions/ exists") {
        let path = entry.expect("readable entry").path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            // cifar10.yaml needs the user's copy of CIFAR-10 (`--set ...path=`): use a fixture.
            let mut options = LoadOptions::default();
            if path.ends_with("cifar10.yaml") {
                with_fixtures("cifar", "");
                let fixture = Path::new(env!("CARGO_TARGET_TMPDIR"))
                    .join("example-fixtures")
                    .join("cifar-10-batches-bin");
                options.overrides = vec![
                    (
                        "stages.images.params.path".into(),
                        fixture.display().to_string(),
                    ),
                    // The fixture holds 10 images.
                    ("stages.batches.params.batch_size".into(), "2".into()),
                ];
            }
            if let Err(d) = load_file(&path, &registry, &options) {
                panic!("{d}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 2, "found {checked} definitions");
}

#[test]
fn the_documented_example_definition_validates() {
    // docs/definitions.md carries a complete example between the markers below.
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/definitions.md"))
            .expect("docs/definitions.md");
    let start = doc
        .find("```yaml\n# complete-example")
        .expect("example start marker")
        + "```yaml\n".len();
    let end = start + doc[start..].find("```").expect("example end");
    let registry = simclr::registry::user();
    if let Err(d) = load_str(
        Path::new("docs/definitions.md"),
        &doc[start..end],
        &registry,
        &LoadOptions::default(),
    ) {
        panic!("{d}");
    }
}

#[test]
fn every_kind_has_a_unique_name_docs_and_a_runnable_example() {
    let registry = simclr::registry::with_testing_kinds();
    let mut names: Vec<&str> = registry.iter().map(|k| k.name).collect();
    let total = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), total, "duplicate kind names");
    for kind in registry.iter() {
        assert!(!kind.summary.is_empty(), "{} has a summary", kind.name);
        for p in kind.param_docs() {
            assert!(
                !p.doc.is_empty(),
                "parameter `{}` of `{}` is documented",
                p.name,
                kind.name
            );
        }
        let example = with_fixtures(kind.name, kind.example);
        // Training examples write a run folder: keep it out of the working tree.
        let run_dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("example-runs")
            .join(kind.name);
        let graph = load_str(
            Path::new(kind.name),
            &example,
            &registry,
            &LoadOptions {
                run_dir: Some(run_dir),
                ..LoadOptions::default()
            },
        )
        .unwrap_or_else(|d| panic!("example of `{}`:\n{d}", kind.name));
        let options = RunOptions {
            shutdown_grace: Duration::from_secs(2),
            ..RunOptions::default()
        };
        runtime::run(&graph, &options)
            .unwrap_or_else(|f| panic!("example of `{}` runs: {f}", kind.name));
    }
}

#[test]
fn user_registry_has_no_test_kinds() {
    let user = simclr::registry::user();
    for kind in simclr_stage_util::testing::KINDS {
        assert!(
            user.get(kind.name).is_none(),
            "test kind `{}` leaked into the user registry",
            kind.name
        );
    }
    assert!(user.get("sequence").is_some() && user.get("sink").is_some());
}

/// Examples of kinds that read the user's files name paths a user would have; for the test,
/// point them at small files made here.
fn with_fixtures(kind: &str, example: &str) -> String {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("example-fixtures");
    match kind {
        "cifar" => {
            let folder = dir.join("cifar-10-batches-bin");
            std::fs::create_dir_all(&folder).expect("fixture dir");
            for i in 1..=5 {
                let record: Vec<u8> = std::iter::once(i as u8)
                    .chain((0..3072).map(|p| (p % 256) as u8))
                    .collect();
                std::fs::write(folder.join(format!("data_batch_{i}.bin")), record.repeat(2))
                    .expect("fixture");
            }
            example.replace("data/cifar-10-batches-bin", &folder.to_string_lossy())
        }
        "image_folder" => {
            let folder = dir.join("photos");
            for class in ["a", "b"] {
                std::fs::create_dir_all(folder.join(class)).expect("fixture dir");
                image::RgbImage::from_pixel(8, 6, image::Rgb([10, 200, 30]))
                    .save(folder.join(class).join("x.png"))
                    .expect("fixture");
            }
            example.replace("data/photos", &folder.to_string_lossy())
        }
        "webdataset" => {
            let folder = dir.join("shards");
            std::fs::create_dir_all(&folder).expect("fixture dir");
            let mut png = std::io::Cursor::new(Vec::new());
            image::RgbImage::from_pixel(8, 6, image::Rgb([10, 200, 30]))
                .write_to(&mut png, image::ImageFormat::Png)
                .expect("fixture");
            for shard in 0..4 {
                let file = std::fs::File::create(folder.join(format!("train-{shard:06}.tar")))
                    .expect("fixture");
                let mut tar = tar::Builder::new(file);
                for (name, data) in [("0.png", png.get_ref().as_slice()), ("0.cls", b"1")] {
                    let mut header = tar::Header::new_ustar();
                    header.set_size(data.len() as u64);
                    header.set_mode(0o644);
                    header.set_cksum();
                    tar.append_data(&mut header, name, data).expect("fixture");
                }
                tar.finish().expect("fixture");
            }
            example.replace("data/shards", &folder.to_string_lossy())
        }
        _ => example.to_owned(),
    }
}
