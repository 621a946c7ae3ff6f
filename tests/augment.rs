//! Policies and custom transforms as definitions see them: located errors, and a transform
//! known to the registry it was added to. (Each transform's own correctness is tested in
//! `stages/augment`.)

use std::path::Path;

use simclr::augment::{Img, Params, Policy, Shape, Transform};
use simclr::config::graph::LoadOptions;
use simclr::core::rng::Rng;

#[test]
fn bad_policies_are_located_errors() {
    let registry = simclr::registry::user();
    let text = "\
name: x
stages:
  images: { kind: synthetic }
  views:
    kind: views
    inputs: [images]
    params:
      t:
        - random_resized_crop: { size: 32, scale: [0.5, 0.2] }
      t_prime:
        - colour_jitter: { brightness: 0.4 }
  drain: { kind: sink, inputs: [views] }
";
    let Err(d) = simclr::config::load_str(
        Path::new("p.yaml"),
        text,
        &registry,
        &LoadOptions::default(),
    ) else {
        panic!("invalid")
    };
    let summary = d.summary();
    assert_eq!(summary.len(), 1, "{d}");
    assert_eq!((summary[0].0, summary[0].1), (9, 51), "{d}");
    assert!(
        summary[0]
            .2
            .contains("`scale` must satisfy 0 < min <= max <= 1, found [0.5, 0.2]"),
        "{d}"
    );
    let text = text.replace("scale: [0.5, 0.2]", "scale: [0.2, 0.5]");
    let Err(d) = simclr::config::load_str(
        Path::new("p.yaml"),
        &text,
        &registry,
        &LoadOptions::default(),
    ) else {
        panic!("invalid")
    };
    assert_eq!(d.summary()[0].0, 11, "{d}");
    assert!(
        d.summary()[0]
            .2
            .contains("unknown transform `colour_jitter`"),
        "{d}"
    );
    assert!(
        d.to_string().contains("color_jitter"),
        "the help lists the transforms: {d}"
    );
}

#[derive(Debug)]
struct Fill(f32);

impl Transform for Fill {
    fn name(&self) -> &str {
        "test_fill"
    }
    fn sample(&self, _shape: Shape, rng: &mut Rng) -> Params {
        Params::Values(vec![self.0 + rng.uniform(0.0, 0.0) as f32])
    }
    fn apply(&self, img: &mut Img, params: &Params) -> Result<(), simclr::augment::TransformError> {
        let Params::Values(v) = params else {
            return Err(simclr::augment::TransformError("values".into()));
        };
        img.f32_mut().fill(v[0]);
        Ok(())
    }
}

fn build_fill(
    node: &simclr::core::Value,
    path: &str,
    _transforms: &simclr::augment::Transforms,
) -> Result<Box<dyn Transform>, simclr::core::ParamError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct C {
        value: f32,
    }
    let c: C = simclr::augment::transform::parse_config(node, path)?;
    Ok(Box::new(Fill(c.value)))
}

#[test]
fn a_registered_custom_transform_is_usable_by_name() {
    use simclr::augment::transform::TransformKind;
    let mut transforms = simclr::augment::Transforms::default();
    transforms
        .add(TransformKind {
            name: "test_fill",
            summary: "fill",
            build: build_fill,
        })
        .expect("registers");
    assert!(
        transforms
            .add(TransformKind {
                name: "resize",
                summary: "x",
                build: build_fill
            })
            .is_err(),
        "built-in names are taken"
    );
    let root = simclr::config::yaml::parse(
        "[{ resize: { size: [4, 5] } }, { test_fill: { value: 0.25 } }]",
    )
    .expect("yaml");
    let policy = Policy::parse_with(&root, "t", &transforms).expect("policy");
    let mut img = Img::from_f32(
        Shape {
            channels: 3,
            height: 17,
            width: 23,
        },
        vec![0.5; 3 * 17 * 23],
    );
    policy
        .run(&mut img, &mut Rng::from_key(&[1]))
        .expect("runs");
    assert_eq!(
        img.shape,
        Shape {
            channels: 3,
            height: 4,
            width: 5
        }
    );
    assert!(img.to_f32().iter().all(|&v| v == 0.25));
    let bad = simclr::config::yaml::parse("[{ test_fill: { valeu: 1 } }]").expect("yaml");
    let err = Policy::parse_with(&bad, "t", &transforms).expect_err("unknown key");
    assert!(
        err.message.contains("unknown field `valeu`"),
        "{}",
        err.message
    );
}

/// A transform added to one registry is known to definitions loaded with it, and to no
/// other: there is no process-wide table.
#[test]
fn a_transform_belongs_to_the_registry_it_was_added_to() {
    use simclr::augment::transform::TransformKind;
    let definition = "\
name: fill
stages:
  images: { kind: synthetic, params: { count: 8, size: 16 } }
  views: { kind: views, inputs: [images], params: { size: 16, t: [{ random_resized_crop: { size: 12 } }, { test_fill2: { value: 0.5 } }] } }
  drain: { kind: sink, inputs: [views] }
";
    let load = |registry: &simclr::config::Registry| {
        simclr::config::load_str(
            std::path::Path::new("fill.yaml"),
            definition,
            registry,
            &Default::default(),
        )
    };
    let mut with = simclr::registry::user();
    simclr::registry::add_transform(
        &mut with,
        TransformKind {
            name: "test_fill2",
            summary: "fill",
            build: build_fill,
        },
    )
    .expect("added");
    let graph = load(&with).expect("known to its registry");
    let views = graph.nodes.iter().find(|n| n.id == "views").expect("views");
    assert_eq!(
        views.facts.preprocessing.as_ref().and_then(|p| p.size),
        Some((12, 12))
    );
    let err = load(&simclr::registry::user()).expect_err("unknown elsewhere");
    assert!(
        err.to_string().contains("unknown transform `test_fill2`"),
        "{err}"
    );
    assert!(
        simclr::registry::add_transform(
            &mut with,
            TransformKind {
                name: "test_fill2",
                summary: "again",
                build: build_fill,
            },
        )
        .is_err(),
        "a name is added once"
    );
}
