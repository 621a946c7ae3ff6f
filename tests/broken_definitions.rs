//! Broken definitions: each asserts the complete list of errors, with line:column.
//! (Issue #2: "at least 12 broken definitions ... each asserting the full list of errors".)

use std::path::Path;

use simclr::config::graph::LoadOptions;
use simclr::config::load_str;

/// Every `(line, column, message)` reported for `text`.
fn errors(text: &str) -> Vec<(u32, u32, String)> {
    let registry = simclr::registry::with_testing_kinds();
    match load_str(
        Path::new("broken.yaml"),
        text,
        &registry,
        &LoadOptions::default(),
    ) {
        Ok(_) => panic!("definition unexpectedly valid:\n{text}"),
        Err(d) => d.summary(),
    }
}

fn e(line: u32, column: u32, message: &str) -> (u32, u32, String) {
    (line, column, message.to_owned())
}

#[test]
fn yaml_syntax_error() {
    let text = "name: x\nstages:\n  numbers: { kind: sequence\n  drain: { kind: sink }\n";
    let got = errors(text);
    assert_eq!(got.len(), 1, "{got:?}");
    let (line, _, message) = &got[0];
    assert!(message.starts_with("YAML syntax error: "), "{message}");
    assert!(*line >= 3, "points at or after the unclosed brace: {got:?}");
}

#[test]
fn empty_file() {
    assert_eq!(errors(""), vec![e(1, 1, "the definition is empty")]);
    assert_eq!(
        errors("# just a comment\n"),
        vec![e(2, 1, "the definition is empty")]
    );
}

#[test]
fn not_a_mapping() {
    assert_eq!(
        errors("- numbers\n- drain\n"),
        vec![e(
            1,
            1,
            "a definition is a mapping with `name:` and `stages:`, found a sequence"
        )]
    );
}

#[test]
fn unknown_kind() {
    let text = "\
name: x
stages:
  numbers:
    kind: sequnce
  drain:
    kind: sink
    inputs: [numbers]
";
    assert_eq!(errors(text), vec![e(4, 11, "unknown stage kind `sequnce`")]);
}

#[test]
fn unknown_keys_everywhere_are_all_reported() {
    let text = "\
name: x
seeed: 3
stages:
  numbers:
    kind: sequence
    parms: { count: 3 }
  drain:
    kind: sink
    inputs: [numbers]
    params: { expected: 3 }
";
    assert_eq!(
        errors(text),
        vec![
            e(2, 1, "unknown key `seeed` in definition"),
            e(6, 5, "unknown key `parms` in stage `numbers`"),
            e(
                10,
                15,
                "stage `drain` (kind `sink`): unknown field `expected`, expected `expect` or `digest`"
            ),
        ]
    );
}

#[test]
fn wrong_value_types() {
    let text = "\
name: x
seed: -1
stages:
  numbers:
    kind: sequence
    workers: many
    params: { count: lots }
  drain:
    kind: [sink]
    inputs: numbers
";
    assert_eq!(
        errors(text),
        vec![
            e(2, 7, "`seed`: invalid value: integer `-1`, expected u64"),
            e(
                6,
                14,
                "`workers`: invalid type: string \"many\", expected i64"
            ),
            e(
                7,
                22,
                "stage `numbers` (kind `sequence`): invalid type: string \"lots\", expected u64"
            ),
            e(9, 11, "`kind`: invalid type: sequence, expected a string"),
            e(
                10,
                13,
                "`inputs` must be a list of stage ids, found a string"
            ),
        ]
    );
}

#[test]
fn missing_required_keys() {
    let text = "\
seed: 1
stages:
  numbers:
    params: { count: 3 }
";
    assert_eq!(
        errors(text),
        vec![
            e(1, 1, "missing required key `name` in the definition"),
            e(4, 5, "missing required key `kind` in `stages.numbers`"),
        ]
    );
}

#[test]
fn missing_input() {
    let text = "\
name: x
stages:
  numbers: { kind: sequence }
  drain: { kind: sink, inputs: [nmbers] }
";
    assert_eq!(
        errors(text),
        vec![e(
            4,
            33,
            "stage `drain` takes input from `nmbers`, which is not defined"
        )]
    );
}

#[test]
fn stage_without_inputs_and_source_with_inputs() {
    let text = "\
name: x
stages:
  numbers: { kind: sequence, inputs: [drain] }
  drain: { kind: sink }
";
    assert_eq!(
        errors(text),
        vec![
            e(
                3,
                3,
                "the output of stage `numbers` (records) goes nowhere: no stage lists it in `inputs`"
            ),
            e(
                3,
                39,
                "stage `drain` (kind `sink`) emits nothing, so it cannot feed `numbers`"
            ),
            e(
                3,
                39,
                "stage `numbers` is a source (kind `sequence`) and takes no inputs"
            ),
            e(
                4,
                3,
                "stage `drain` (kind `sink`) has no inputs, so it would never receive anything"
            ),
        ]
    );
}

#[test]
fn edge_type_mismatch() {
    let text = "\
name: x
stages:
  numbers: { kind: sequence }
  pictures: { kind: expect_images, inputs: [numbers] }
";
    assert_eq!(
        errors(text),
        vec![e(
            4,
            45,
            "stage `pictures` (kind `expect_images`) takes images, but its input `numbers` (kind `sequence`) emits records"
        )]
    );
}

#[test]
fn cycle() {
    let text = "\
name: x
stages:
  numbers: { kind: sequence }
  a: { kind: slow, inputs: [numbers, c] }
  b: { kind: slow, inputs: [a] }
  c: { kind: slow, inputs: [b] }
  drain: { kind: sink, inputs: [c] }
";
    assert_eq!(
        errors(text),
        vec![e(4, 3, "cycle between stages: a -> b -> c -> a")]
    );
}

#[test]
fn self_loop() {
    let text = "\
name: x
stages:
  numbers: { kind: sequence }
  a: { kind: slow, inputs: [numbers, a] }
  drain: { kind: sink, inputs: [a] }
";
    assert_eq!(
        errors(text),
        vec![e(4, 38, "stage `a` lists itself as an input")]
    );
}

#[test]
fn zero_capacity() {
    let text = "\
name: x
edges: { capacity: 0 }
stages:
  numbers: { kind: sequence }
  drain:
    kind: sink
    inputs: [{ from: numbers, capacity: 0 }]
";
    assert_eq!(
        errors(text),
        vec![
            e(
                2,
                20,
                "edge capacity must be between 1 and 1048576, found 0"
            ),
            e(
                7,
                41,
                "edge capacity must be between 1 and 1048576, found 0"
            ),
        ]
    );
}

#[test]
fn duplicate_id() {
    let text = "\
name: x
stages:
  numbers: { kind: sequence }
  drain: { kind: sink, inputs: [numbers] }
  numbers: { kind: sequence }
";
    assert_eq!(
        errors(text),
        vec![e(
            5,
            3,
            "duplicate stage id `numbers` (first defined at line 3)"
        )]
    );
}

#[test]
fn unconnected_stage() {
    let text = "\
name: x
stages:
  numbers: { kind: sequence }
  spare: { kind: sequence }
  drain: { kind: sink, inputs: [numbers] }
";
    assert_eq!(
        errors(text),
        vec![e(
            4,
            3,
            "the output of stage `spare` (records) goes nowhere: no stage lists it in `inputs`"
        )]
    );
}

#[test]
fn bad_workers() {
    let text = "\
name: x
stages:
  numbers: { kind: sequence, workers: 0 }
  drain: { kind: sink, inputs: [numbers], workers: 2 }
";
    assert_eq!(
        errors(text),
        vec![
            e(3, 39, "`workers` must be between 1 and 1024, found 0"),
            e(
                4,
                52,
                "stage `drain`: kind `sink` runs on one thread, but `workers: 2` was given"
            ),
        ]
    );
}

#[test]
fn credit_that_closes_no_loop_and_bad_device() {
    let text = "\
name: x
device: gpu
stages:
  numbers: { kind: sequence }
  a: { kind: slow, inputs: [numbers], credit: { from: drain, window: 0 } }
  drain: { kind: sink, inputs: [numbers] }
  other: { kind: sink, inputs: [a] }
";
    assert_eq!(
        errors(text),
        vec![
            e(2, 9, "unknown device `gpu`"),
            e(
                5,
                55,
                "credit from `drain` to `a` does not close a loop: `drain` is not downstream of `a`"
            ),
            e(5, 70, "`window` must be at least 1, found 0"),
        ]
    );
}

#[test]
fn bad_parameter_value_points_at_the_parameter() {
    let text = "\
name: x
stages:
  numbers:
    kind: sequence
    params:
      rate: -5
  drain: { kind: sink, inputs: [numbers] }
";
    assert_eq!(
        errors(text),
        vec![e(
            6,
            13,
            "stage `numbers` (kind `sequence`): `rate` must be a positive number of records per second, found -5"
        )]
    );
}

#[test]
fn rendered_report_names_file_position_path_and_help() {
    let registry = simclr::registry::user();
    let text = "name: x\nstages:\n  numbers: { kind: sequence }\n  drain: { kind: sikn, inputs: [numbers] }\n";
    let Err(d) = load_str(
        Path::new("defs/x.yaml"),
        text,
        &registry,
        &LoadOptions::default(),
    ) else {
        panic!("should fail");
    };
    let expected = "\
error: unknown stage kind `sikn`
 --> defs/x.yaml:4:18
  |
4 |   drain: { kind: sikn, inputs: [numbers] }
  |                  ^^^^
  = at: stages.drain.kind
  = help: did you mean `sink`? `simclr stages` lists every kind

defs/x.yaml: 1 error";
    assert_eq!(d.to_string(), expected);
}

#[test]
fn bad_distributed_settings() {
    let stages = "stages:\n  numbers: { kind: sequence, params: { count: 4 } }\n  drain: { kind: sink, inputs: [numbers] }\n";
    let got = errors(&format!(
        "name: x\ndistributed: {{ backend: gloo }}\n{stages}"
    ));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].0, got[0].1), (2, 25), "{got:?}");
    assert!(got[0].2.contains("unknown variant `gloo`"), "{got:?}");
    let got = errors(&format!(
        "name: x\ndistributed: {{ timeout_s: 0, ranks: 2 }}\n{stages}"
    ));
    let messages: Vec<&str> = got.iter().map(|g| g.2.as_str()).collect();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(messages[0].contains("unknown field `ranks`"), "{got:?}");
    assert_eq!(
        errors(&format!(
            "name: x\ndistributed: {{ timeout_s: -1 }}\n{stages}"
        )),
        vec![e(
            2,
            14,
            "`distributed.timeout_s` must be a positive number of seconds, found -1"
        )]
    );
    assert_eq!(
        errors(&format!(
            "name: x\ndistributed: {{ local_groups: 2 }}\n{stages}"
        )),
        vec![e(
            2,
            14,
            "`distributed.local_groups: 2` needs `batch_norm: local` and at least 1 group"
        )]
    );
}
