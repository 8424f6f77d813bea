//! The metric contract across code, docs and the stack: every metric and
//! label a dashboard or alert queries is one the crate emits (after the
//! Prometheus translation), the translation used here is the one Prometheus'
//! own library gives, and the README, docs/telemetry.md (and DESIGN.md,
//! where present) list exactly the metrics in `METRICS`. The durable worker's extra series
//! ([`DURABLE_ONLY`]) are accepted too; built with `--features postgres`,
//! that list is checked against `bg_queue::durable::DURABLE_METRICS`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bg_queue::{InstrumentKind, MetricDefinition, METRICS};
use common::otlp::wire_kind;

/// Prometheus' OTLP translation of a unit into a name suffix (only the
/// units this crate uses; `{...}` annotations are dropped).
fn unit_suffix(unit: &str) -> &'static str {
    match unit {
        "s" => "_seconds",
        u if u.starts_with('{') => "",
        other => panic!("unit {other} has no translation here; add it"),
    }
}

fn label(attribute: &str) -> String {
    attribute.replace('.', "_")
}

/// The Prometheus metric name of `def` (`_total` for counters; a histogram's
/// series add `_bucket`, `_sum` and `_count` to it).
fn metric_name(def: &MetricDefinition) -> String {
    let base = format!("{}{}", def.name.replace('.', "_"), unit_suffix(def.unit));
    match def.kind {
        InstrumentKind::Counter => format!("{base}_total"),
        InstrumentKind::UpDownCounter | InstrumentKind::Gauge | InstrumentKind::Histogram => base,
    }
}

/// Metrics only the durable worker (feature `postgres`) emits, beyond
/// `METRICS`: counters (`{task}`) with the pool and task labels, like
/// `bg.task.spawned`. `durable_only_is_what_durable_metrics_adds` holds
/// this list to `DURABLE_METRICS` in the `postgres` build.
const DURABLE_ONLY: [&str; 2] = ["bg.task.retried", "bg.task.discarded"];

/// Prometheus series names for each metric, with the labels they carry.
fn translated() -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for name in DURABLE_ONLY {
        let labels = ["bg_pool_name", "bg_task_name"].map(String::from).into();
        out.insert(format!("{}_total", name.replace('.', "_")), labels);
    }
    for def in METRICS {
        let name = metric_name(&def);
        let labels: BTreeSet<String> = def.attributes.iter().map(|a| label(a)).collect();
        let names = match def.kind {
            InstrumentKind::Histogram => {
                vec![
                    format!("{name}_bucket"),
                    format!("{name}_sum"),
                    format!("{name}_count"),
                ]
            }
            InstrumentKind::Counter | InstrumentKind::UpDownCounter | InstrumentKind::Gauge => {
                vec![name]
            }
        };
        for name in names {
            out.insert(name, labels.clone());
        }
    }
    out
}

/// `target/tools/prom-names` (`BG_QUEUE_PROM_NAMES` overrides): Prometheus'
/// own OTLP name translation, built by `scripts/build_prom_names.py`
/// (`./scripts/test` runs it). The test checks it exists with
/// `common::require_tool`.
fn prom_names() -> PathBuf {
    std::env::var_os("BG_QUEUE_PROM_NAMES")
        .map_or_else(|| root().join("target/tools/prom-names"), PathBuf::from)
}

/// Runs Prometheus' translation on every metric of the crate, as its OTLP
/// data type arrives on the wire (tests/otlp.rs checks that type), with the
/// program at `prom_names`.
fn prometheus_translation(prom_names: &Path) -> Vec<(String, BTreeSet<String>)> {
    let input: String = METRICS
        .iter()
        .map(|def| {
            format!(
                "{}\t{}\t{}\t{}\n",
                def.name,
                def.unit,
                wire_kind(def.kind),
                def.attributes.join(",")
            )
        })
        .collect();
    let mut child = Command::new(prom_names)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("prom-names starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "prom-names failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let (name, labels) = line.split_once('\t').expect("name<TAB>labels");
            let labels = labels
                .split(',')
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect();
            (name.to_owned(), labels)
        })
        .collect()
}

/// Labels every series has behind the collector, or the query language adds.
const COMMON_LABELS: &[&str] = &[
    "job",
    "instance",
    "le",
    "service_name",
    "alertname",
    "severity",
];

/// The collector's span metrics (from the crate's `bg.run` spans), with the
/// dimensions `otel-collector.yaml` configures.
fn span_metric_labels() -> BTreeSet<String> {
    let config = std::fs::read_to_string(root().join("otel-collector.yaml")).unwrap();
    let mut labels: BTreeSet<String> = ["span_name", "span_kind", "status_code"]
        .map(String::from)
        .into();
    for line in config.lines() {
        if let Some(name) = line.trim().strip_prefix("- name: ") {
            labels.insert(label(name));
        }
    }
    labels
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn identifiers(text: &str) -> Vec<(usize, String)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let starts = (text[i..].starts_with("bg_")
            || text[i..].starts_with("traces_span_metrics_"))
            && (i == 0
                || !(bytes[i - 1].is_ascii_alphanumeric()
                    || bytes[i - 1] == b'_'
                    || bytes[i - 1] == b'.'));
        if starts {
            let end = text[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(text.len(), |n| i + n);
            out.push((i, text[i..end].to_owned()));
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// Label names inside `{...}` right after `metric`, if any.
fn selector_labels(text: &str, after: usize) -> Vec<String> {
    let rest = &text[after..];
    if !rest.starts_with('{') {
        return Vec::new();
    }
    let Some(end) = rest.find('}') else {
        return Vec::new();
    };
    rest[1..end]
        .split(',')
        .filter_map(|matcher| {
            let name = matcher.trim().split(['=', '!', '~']).next()?.trim();
            (!name.is_empty()).then(|| name.to_owned())
        })
        .collect()
}

fn check_file(path: &str, seen_metrics: &mut BTreeSet<String>) {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    // JSON escapes quotes inside queries; undo that for selector parsing.
    let text = text.replace("\\\"", "\"");
    let metrics = translated();
    let labels: BTreeSet<String> = METRICS
        .iter()
        .flat_map(|m| m.attributes.iter().map(|a| label(a)))
        .collect();
    let span_labels = span_metric_labels();
    let mut checked = 0;
    for (at, ident) in identifiers(&text) {
        let after = at + ident.len();
        if let Some(metric_labels) = metrics.get(&ident) {
            seen_metrics.insert(ident.clone());
            for used in selector_labels(&text, after) {
                assert!(
                    metric_labels.contains(&used) || COMMON_LABELS.contains(&used.as_str()),
                    "{path}: {ident} has no label {used} (it has {metric_labels:?})"
                );
            }
        } else if ident.starts_with("traces_span_metrics_") {
            assert_eq!(
                ident, "traces_span_metrics_duration_seconds_bucket",
                "{path}: unknown span metric"
            );
            for used in selector_labels(&text, after) {
                assert!(
                    span_labels.contains(&used) || COMMON_LABELS.contains(&used.as_str()),
                    "{path}: span metrics have no label {used}: add it to the collector's dimensions"
                );
            }
        } else {
            assert!(
                labels.contains(&ident),
                "{path}: {ident} is neither a metric the crate emits (after translation) nor one of its labels"
            );
        }
        checked += 1;
    }
    assert!(
        checked > 10,
        "{path}: only {checked} identifiers found; is the scan broken?"
    );
}

#[test]
fn dashboards_and_alerts_query_only_what_the_crate_emits() {
    let mut dashboard_metrics = BTreeSet::new();
    check_file("dashboards/bg-queue.json", &mut dashboard_metrics);
    let mut alert_metrics = BTreeSet::new();
    check_file("dashboards/alerts.yaml", &mut alert_metrics);
    check_file("dashboards/alerts.test.yaml", &mut BTreeSet::new());
    // The dashboard shows every metric family the crate exports.
    for name in METRICS.iter().map(|def| def.name).chain(DURABLE_ONLY) {
        let prefix = name.replace('.', "_");
        assert!(
            dashboard_metrics.iter().any(|m| m.starts_with(&prefix)),
            "the dashboard never shows {name}",
        );
    }
    assert!(
        alert_metrics.contains("bg_task_discarded_total"),
        "no alert on discarded durable jobs: {alert_metrics:?}"
    );
    assert!(alert_metrics.len() >= 4, "{alert_metrics:?}");
}

/// The durable worker's metrics are `METRICS` (same unit, so the same
/// Prometheus name) plus exactly [`DURABLE_ONLY`], counted in `{task}`.
#[cfg(feature = "postgres")]
#[test]
fn durable_only_is_what_durable_metrics_adds() {
    use bg_queue::durable::{names, DURABLE_METRICS};
    let mut extra = Vec::new();
    for (name, unit, _) in DURABLE_METRICS {
        match METRICS.iter().find(|def| def.name == name) {
            Some(def) => assert_eq!(def.unit, unit, "{name}: the durable unit differs"),
            None => {
                assert_eq!(unit, "{task}", "{name}: a durable-only metric is a count");
                extra.push(name);
            }
        }
    }
    assert_eq!(extra, DURABLE_ONLY);
    assert!(DURABLE_ONLY.contains(&names::METRIC_RETRIED));
    assert!(DURABLE_ONLY.contains(&names::METRIC_DISCARDED));
}

#[test]
fn the_translation_matches_the_design_examples() {
    let metrics = translated();
    for name in [
        "bg_task_wait_seconds_bucket",
        "bg_task_duration_seconds_bucket",
        "bg_task_dropped_total",
        "bg_queue_depth",
        "bg_queue_oldest_age_seconds",
    ] {
        assert!(metrics.contains_key(name), "{name}");
    }
    assert!(metrics["bg_task_dropped_total"].contains("bg_drop_reason"));
}

#[test]
fn the_translation_here_is_the_one_prometheus_makes() {
    let prom_names = prom_names();
    if !common::require_tool("prom-names", prom_names.exists()) {
        return;
    }
    let real = prometheus_translation(&prom_names);
    assert_eq!(real.len(), METRICS.len(), "one line per metric: {real:?}");
    for (def, (name, labels)) in METRICS.iter().zip(&real) {
        assert_eq!(
            name,
            &metric_name(def),
            "{}: Prometheus names it {name}; fix unit_suffix/metric_name here, then the dashboards",
            def.name
        );
        let expected: BTreeSet<String> = def.attributes.iter().map(|a| label(a)).collect();
        assert_eq!(labels, &expected, "{}: labels", def.name);
    }
}

/// `| \`bg.x\` | kind | unit | ...` rows of a markdown metrics table.
fn markdown_metrics(text: &str) -> BTreeMap<String, (String, String)> {
    text.lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            let is_kind = ["Counter", "UpDownCounter", "Gauge", "Histogram"]
                .iter()
                .any(|kind| cells.get(2).is_some_and(|cell| cell.starts_with(kind)));
            if !name.starts_with("bg.") || cells.len() < 5 || !is_kind {
                return None;
            }
            let unit = cells[3].trim_matches('`').to_owned();
            Some((name.to_owned(), (cells[2].to_owned(), unit)))
        })
        .collect()
}

fn kind_word(kind: InstrumentKind) -> &'static str {
    match kind {
        InstrumentKind::Counter => "Counter",
        InstrumentKind::UpDownCounter => "UpDownCounter",
        InstrumentKind::Gauge => "Gauge",
        InstrumentKind::Histogram => "Histogram",
    }
}

fn assert_table_matches(doc: &str, text: &str) {
    let table = markdown_metrics(text);
    let names: BTreeSet<&str> = table.keys().map(String::as_str).collect();
    let code: BTreeSet<&str> = METRICS.iter().map(|m| m.name).collect();
    assert_eq!(names, code, "{doc}'s metric table and METRICS disagree");
    for def in METRICS {
        let (kind, unit) = &table[def.name];
        assert!(
            kind.starts_with(kind_word(def.kind)),
            "{doc}: {} is a {kind}, code says {:?}",
            def.name,
            def.kind
        );
        assert_eq!(unit, def.unit, "{doc}: unit of {}", def.name);
    }
}

#[test]
fn the_readme_lists_exactly_the_exported_metrics() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert_table_matches("README.md", &readme);
}

/// docs/telemetry.md has the full table: every metric with its kind, unit,
/// attributes and description as `METRICS` has them.
#[test]
fn docs_telemetry_md_lists_exactly_the_exported_metrics() {
    let path = "docs/telemetry.md";
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    assert_table_matches(path, &text);
    for def in METRICS {
        let row = text
            .lines()
            .find(|line| line.starts_with(&format!("| `{}` |", def.name)))
            .unwrap_or_else(|| panic!("{path}: no row for {}", def.name));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let attributes: Vec<&str> = cells[4]
            .split(',')
            .map(|attribute| attribute.trim().trim_matches('`'))
            .collect();
        assert_eq!(
            attributes, def.attributes,
            "{path}: attributes of {}",
            def.name
        );
        assert_eq!(
            cells[5], def.description,
            "{path}: description of {}",
            def.name
        );
    }
}

/// shared/DESIGN.md sits beside the checkout (the owners' contract). Its
/// main metric table lists the first metrics; later additions (the on-call
/// section's `bg.task.busy`, say) are named in its text. So: every row of
/// its table is an exported metric with the same kind and unit, and every
/// exported metric is in the table or named in the text.
#[test]
fn design_md_names_exactly_the_exported_metrics_when_present() {
    let design = root().join("../shared/DESIGN.md");
    let Ok(text) = std::fs::read_to_string(&design) else {
        eprintln!(
            "{} not found; README check covers the table",
            design.display()
        );
        return;
    };
    let table = markdown_metrics(&text);
    for (name, (kind, unit)) in &table {
        let def = METRICS
            .iter()
            .find(|def| def.name == name)
            .unwrap_or_else(|| panic!("DESIGN.md lists {name}, which the crate does not export"));
        assert!(kind.starts_with(kind_word(def.kind)), "{name}: {kind}");
        assert_eq!(unit, def.unit, "{name}'s unit");
    }
    for def in METRICS {
        assert!(
            table.contains_key(def.name) || text.contains(&format!("`{}`", def.name)),
            "DESIGN.md neither lists nor names {}",
            def.name
        );
    }
}

/// The README's quick start is `examples/quickstart.rs`, which CI builds:
/// the README must show that code verbatim.
#[test]
fn the_readme_quick_start_is_the_example_ci_builds() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let example = std::fs::read_to_string(root().join("examples/quickstart.rs")).unwrap();
    let code = example
        .split("// --- README quick start begins ---\n")
        .nth(1)
        .and_then(|rest| rest.split("// --- README quick start ends ---").next())
        .expect("examples/quickstart.rs marks the quick start");
    let quick_start = readme
        .split("## Quick start")
        .nth(1)
        .expect("a Quick start section");
    assert!(
        quick_start.contains(&format!("```rust,ignore\n{code}```")),
        "the README's quick start differs from examples/quickstart.rs"
    );
}
