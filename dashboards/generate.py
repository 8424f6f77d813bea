#!/usr/bin/env python3
"""Generates dashboards/bg-queue.json (dashboard as code).

Run `python3 dashboards/generate.py` after editing; the test suite checks
that the committed JSON is what this script produces.

Every query aggregates with `sum by` / `max by` over the labels it shows, so
several instances of a service (distinct `instance` labels) add up instead of
drawing one line per process.
"""
import json
import pathlib

SEL = 'job=~"$service", bg_pool_name=~"$pool"'
SEL_TASK = SEL + ', bg_task_name=~"$task"'
RATE = "$__rate_interval"

_next_id = [0]


def panel_id():
    _next_id[0] += 1
    return _next_id[0]


def target(expr, legend, ref, exemplar=False):
    return {
        "datasource": {"type": "prometheus", "uid": "prometheus"},
        "expr": expr,
        "legendFormat": legend,
        "refId": ref,
        "exemplar": exemplar,
        "range": True,
    }


def timeseries(title, description, targets, x, y, w=12, h=8, unit="short", overrides=None, stack=False):
    return {
        "id": panel_id(),
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "prometheus"},
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "custom": {
                    "drawStyle": "line",
                    "lineWidth": 1,
                    "fillOpacity": 10,
                    "showPoints": "never",
                    "stacking": {"mode": "normal" if stack else "none", "group": "A"},
                },
            },
            "overrides": overrides or [],
        },
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "showLegend": True, "calcs": ["lastNotNull", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": targets,
    }


def stat(title, description, expr, x, y, unit, thresholds, w=6, h=4):
    return {
        "id": panel_id(),
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": {"type": "prometheus", "uid": "prometheus"},
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "thresholds": {"mode": "absolute", "steps": thresholds},
                "color": {"mode": "thresholds"},
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "area",
            "textMode": "value_and_name",
        },
        "targets": [target(expr, "{{bg_pool_name}}", "A")],
    }


def limit_line(ref, color=None):
    """Draws query `ref` as an unstacked dashed line (a capacity or limit)."""
    properties = [
        {"id": "custom.stacking", "value": {"mode": "none", "group": ref}},
        {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
        {"id": "custom.fillOpacity", "value": 0},
    ]
    if color:
        properties.append({"id": "color", "value": {"mode": "fixed", "fixedColor": color}})
    return [{"matcher": {"id": "byFrameRefID", "options": ref}, "properties": properties}]


def row(title, y):
    return {"id": panel_id(), "type": "row", "title": title, "collapsed": False, "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []}


def steps(*pairs):
    out = [{"color": pairs[0], "value": None}]
    for value, color in zip(pairs[1::2], pairs[2::2]):
        out.append({"color": color, "value": value})
    return out


def quantiles(metric, by, sel, legend_prefix):
    return [
        target(
            f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}{{{sel}}}[{RATE}])))",
            f"p{int(q * 100)} {legend_prefix}",
            ref,
        )
        for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
    ]


def variable(name, label, query):
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "prometheus"},
        "query": {"query": query, "refId": f"var-{name}"},
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
        "sort": 1,
    }


def dashboard():
    panels = []
    y = 0
    panels.append(row("Queue: is it backing up, and since when?", y))
    y += 1
    panels.append(stat(
        "Saturation",
        "Queued tasks as a share of queue capacity, summed over instances. At 100% new tasks are dropped (queue_full).",
        f"sum by (bg_pool_name) (bg_queue_depth{{{SEL}}}) / sum by (bg_pool_name) (bg_queue_capacity{{{SEL}}})",
        0, y, "percentunit", steps("green", 0.6, "orange", 0.9, "red"),
    ))
    panels.append(stat(
        "Oldest queued task",
        "Age of the oldest task still waiting for a runner (the worst instance). Sidekiq and asynq call this latency.",
        f"max by (bg_pool_name) (bg_queue_oldest_age_seconds{{{SEL}}})",
        6, y, "s", steps("green", 10, "orange", 60, "red"),
    ))
    panels.append(stat(
        "Drops per second",
        "Tasks not accepted (all reasons), summed over instances.",
        f"sum by (bg_pool_name) (rate(bg_task_dropped_total{{{SEL}}}[{RATE}]))",
        12, y, "reqps", steps("green", 0.001, "red"),
    ))
    panels.append(stat(
        "Failure ratio (10m)",
        "Share of finished tasks that returned Err, panicked or timed out over the last 10 minutes.",
        f'sum by (bg_pool_name) (rate(bg_task_duration_seconds_count{{{SEL}, bg_task_outcome=~"failed|panicked|timed_out"}}[10m])) / sum by (bg_pool_name) (rate(bg_task_duration_seconds_count{{{SEL}}}[10m]))',
        18, y, "percentunit", steps("green", 0.01, "orange", 0.05, "red"),
    ))
    y += 4
    panels.append(timeseries(
        "Queue depth against capacity",
        "Tasks accepted and waiting for a runner, per task name, stacked; the dashed line is the pool's capacity (summed over instances).",
        [
            target(f"sum by (bg_task_name) (bg_queue_depth{{{SEL_TASK}}})", "{{bg_task_name}}", "A"),
            target(f"sum by (bg_pool_name) (bg_queue_capacity{{{SEL}}})", "capacity {{bg_pool_name}}", "B"),
        ],
        0, y, stack=True, overrides=limit_line("B", color="red"),
    ))
    panels.append(timeseries(
        "Running against parallelism",
        "Tasks running now per task name, stacked, against the pool's parallelism (summed over instances).",
        [
            target(f"sum by (bg_task_name) (bg_task_active{{{SEL_TASK}}})", "{{bg_task_name}}", "A"),
            target(f"sum by (bg_pool_name) (bg_pool_parallelism{{{SEL}}})", "parallelism {{bg_pool_name}}", "B"),
        ],
        12, y, stack=True, overrides=limit_line("B"),
    ))
    y += 8
    panels.append(timeseries(
        "Oldest queued task age",
        "How long the oldest waiting task has waited, per pool (worst instance).",
        [target(f"max by (bg_pool_name) (bg_queue_oldest_age_seconds{{{SEL}}})", "{{bg_pool_name}}", "A")],
        0, y, unit="s",
    ))
    panels.append(timeseries(
        "Throughput",
        "Tasks accepted (spawned) and finished ok (completed) per second, per task name.",
        [
            target(f"sum by (bg_task_name) (rate(bg_task_spawned_total{{{SEL_TASK}}}[{RATE}]))", "spawned {{bg_task_name}}", "A"),
            target(f'sum by (bg_task_name) (rate(bg_task_duration_seconds_count{{{SEL_TASK}, bg_task_outcome="ok"}}[{RATE}]))', "completed {{bg_task_name}}", "B"),
        ],
        12, y, unit="reqps",
    ))
    y += 8
    panels.append(row("Latency: which task type is slow?", y))
    y += 1
    panels.append(timeseries(
        "Queue wait p50 / p95 / p99 by task",
        "Time from spawn to the start of the run (bg.task.wait), by task name.",
        quantiles("bg_task_wait_seconds_bucket", "bg_task_name", SEL_TASK, "{{bg_task_name}}"),
        0, y, unit="s",
    ))
    panels.append(timeseries(
        "Run time p50 / p95 / p99 by task",
        "Execution time (bg.task.duration), all outcomes, by task name.",
        quantiles("bg_task_duration_seconds_bucket", "bg_task_name", SEL_TASK, "{{bg_task_name}}"),
        12, y, unit="s",
    ))
    y += 8
    panels.append(timeseries(
        "Busy against run time p99 by task",
        "Busy time (bg.task.busy: time inside poll, the CPU part) beside run time (bg.task.duration). Run time far above busy time is waiting on I/O or timers (the SMTP server, not the pool).",
        [
            target(
                f"histogram_quantile(0.99, sum by (le, bg_task_name) (rate(bg_task_busy_seconds_bucket{{{SEL_TASK}}}[{RATE}])))",
                "busy p99 {{bg_task_name}}",
                "A",
            ),
            target(
                f"histogram_quantile(0.99, sum by (le, bg_task_name) (rate(bg_task_duration_seconds_bucket{{{SEL_TASK}}}[{RATE}])))",
                "run p99 {{bg_task_name}}",
                "B",
            ),
        ],
        0, y, w=24, unit="s",
    ))
    y += 8
    panels.append(timeseries(
        "Run time p99 with example traces",
        "p99 of the bg.run spans (from the collector's span metrics); the dots are exemplars: click one to open that run's trace in Jaeger.",
        [target(
            f'histogram_quantile(0.99, sum by (le, bg_task_name) (rate(traces_span_metrics_duration_seconds_bucket{{{SEL_TASK}, span_name=~"run .*"}}[{RATE}])))',
            "p99 {{bg_task_name}}",
            "A",
            exemplar=True,
        )],
        0, y, w=24, unit="s",
    ))
    y += 8
    panels.append(row("Errors: what is being lost or failing?", y))
    y += 1
    panels.append(timeseries(
        "Drops per second by task and reason",
        "Tasks not accepted: queue_full (the queue held capacity tasks), closed (after shutdown began), no_runtime.",
        [target(f"sum by (bg_task_name, bg_drop_reason) (rate(bg_task_dropped_total{{{SEL_TASK}}}[{RATE}]))", "{{bg_task_name}} {{bg_drop_reason}}", "A")],
        0, y, unit="reqps",
    ))
    panels.append(timeseries(
        "Panics and timeouts",
        "Tasks that panicked or ran past the pool's timeout, per task name (count per interval).",
        [target(
            f'sum by (bg_task_name, bg_task_outcome) (increase(bg_task_duration_seconds_count{{{SEL_TASK}, bg_task_outcome=~"panicked|timed_out"}}[{RATE}]))',
            "{{bg_task_name}} {{bg_task_outcome}}",
            "A",
        )],
        12, y,
    ))
    y += 8
    panels.append(timeseries(
        "Failure rate by task",
        "Tasks that returned Err, per second, per task name.",
        [target(
            f'sum by (bg_task_name) (rate(bg_task_duration_seconds_count{{{SEL_TASK}, bg_task_outcome="failed"}}[{RATE}]))',
            "{{bg_task_name}}",
            "A",
        )],
        0, y, unit="reqps",
    ))
    panels.append(timeseries(
        "Failure ratio by task",
        "Share of finished tasks that returned Err, per task name.",
        [target(
            f'sum by (bg_task_name) (rate(bg_task_duration_seconds_count{{{SEL_TASK}, bg_task_outcome="failed"}}[{RATE}])) / sum by (bg_task_name) (rate(bg_task_duration_seconds_count{{{SEL_TASK}}}[{RATE}]))',
            "{{bg_task_name}}",
            "A",
        )],
        12, y, unit="percentunit",
    ))
    y += 8
    panels.append(row("Durable jobs (Postgres): retried, discarded, waiting?", y))
    y += 1
    # A durable queue has no capacity series (the table is its queue);
    # `unless` keeps the in-memory pools out. Every worker of a queue reads
    # the same table, so instances are combined with max, not sum.
    durable_only = f"unless on (job, bg_pool_name) bg_queue_capacity{{{SEL}}}"
    panels.append(timeseries(
        "Retries per second by task",
        "Failed attempts of durable jobs that will run again after a backoff (bg.task.retried), per task name.",
        [target(f"sum by (bg_task_name) (rate(bg_task_retried_total{{{SEL_TASK}}}[{RATE}]))", "{{bg_task_name}}", "A")],
        0, y, unit="reqps",
    ))
    panels.append(timeseries(
        "Discarded per second by task",
        "Durable jobs given up on (bg.task.discarded): attempts exhausted, or arguments that do not decode. /debug/bg lists them with their error history.",
        [target(f"sum by (bg_task_name) (rate(bg_task_discarded_total{{{SEL_TASK}}}[{RATE}]))", "{{bg_task_name}}", "A")],
        12, y, unit="reqps",
    ))
    y += 8
    panels.append(timeseries(
        "Durable queue depth by task",
        "Due jobs waiting for a worker in the jobs table, per queue and task name (the table's count, the same on every worker, so the max over instances). A task name no worker handles stays here.",
        [target(f"max by (bg_pool_name, bg_task_name) (bg_queue_depth{{{SEL_TASK}}} {durable_only})", "{{bg_pool_name}} {{bg_task_name}}", "A")],
        0, y, stack=True,
    ))
    panels.append(timeseries(
        "Oldest due durable job",
        "Age of the oldest due job per durable queue, on the database's clock (max over instances).",
        [target(f"max by (bg_pool_name) (bg_queue_oldest_age_seconds{{{SEL}}} {durable_only})", "{{bg_pool_name}}", "A")],
        12, y, unit="s",
    ))
    return {
        "uid": "bg-queue",
        "title": "bg-queue: background tasks",
        "description": "Depth, wait, run time, drops and failures of bg-queue pools. Metric names per the crate's METRICS table.",
        "tags": ["bg-queue"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 41,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "links": [{
            "title": "Jaeger",
            "tooltip": "Traces of the selected service",
            "type": "link",
            "url": "http://localhost:16686/search?service=${service}",
            "targetBlank": True,
            "icon": "external link",
            "tags": [],
            "asDropdown": False,
            "includeVars": False,
            "keepTime": False,
        }],
        "templating": {"list": [
            variable("service", "service", "label_values(bg_task_spawned_total, job)"),
            variable("pool", "pool", 'label_values(bg_task_spawned_total{job=~"$service"}, bg_pool_name)'),
            variable("task", "task", 'label_values(bg_task_spawned_total{job=~"$service", bg_pool_name=~"$pool"}, bg_task_name)'),
        ]},
        "annotations": {"list": []},
        "panels": panels,
    }


def render():
    return json.dumps(dashboard(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    out = pathlib.Path(__file__).with_name("bg-queue.json")
    out.write_text(render())
    print(f"wrote {out}")
