#!/usr/bin/env bash
# Checks the non-AWS monitoring (issue 17): the Prometheus configuration and alert rules
# with promtool (config, rules, unit tests), and the Grafana dashboard (JSON, data source,
# PromQL that parses and names only metrics the code defines).
# Usage: scripts/check-prometheus.sh        One line per check; exits 1 if any failed.
set -euo pipefail
cd "$(dirname "$0")/.."

prom=local/prometheus
grafana=local/grafana
metrics_rs=shared/core/src/observability/metrics.rs

if ! command -v promtool >/dev/null 2>&1; then
  echo "check-prometheus: FAIL promtool not found; scripts/test-setup.sh installs it (apt-get install prometheus)" >&2
  exit 1
fi

failed=0
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# check "description" command...: runs the command, prints one line, and the command's
# output only when it failed.
check() {
  local what=$1
  shift
  if "$@" >"$scratch/out" 2>&1; then
    echo "check-prometheus: ok   $what"
  else
    echo "check-prometheus: FAIL $what"
    sed 's/^/    /' "$scratch/out"
    failed=1
  fi
}

check "promtool check config $prom/prometheus.yml" promtool check config "$prom/prometheus.yml"
check "promtool check config $prom/prometheus.docker.yml" promtool check config "$prom/prometheus.docker.yml"
check "promtool check rules $prom/alerts.yml" promtool check rules "$prom/alerts.yml"
check "promtool test rules $prom/alerts_test.yml" promtool test rules "$prom/alerts_test.yml"

# The Python checks share one helper: `lint.py <check>`.
cat >"$scratch/lint.py" <<'PY'
import json, re, sys
try:
    import yaml
except ImportError:
    sys.exit("PyYAML is missing: python3 -m pip install pyyaml (scripts/test-setup.sh)")

PROM, GRAFANA, METRICS_RS, SCRATCH = sys.argv[2:6]
DASHBOARD = f"{GRAFANA}/dashboards/chatkb.json"
DATASOURCE_UID = "prometheus"
# Series Prometheus makes itself, not the functions.
BUILT_IN = {"up"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                "and", "or", "unless", "offset", "inf", "nan"}


def code_metric_names():
    text = open(METRICS_RS).read()
    block = re.search(r"pub mod names \{(.*?)\n\}", text, re.S)
    if not block:
        sys.exit(f"{METRICS_RS}: no `pub mod names` block")
    return set(re.findall(r'pub const \w+: &str = "([^"]+)";', block.group(1)))


def metric_names(expr):
    """The metric names an expression selects (a small lexer, not a PromQL parser)."""
    found = set()
    for m in re.finditer(r'__name__\s*=~?\s*"([^"]*)"', expr):
        found |= set(m.group(1).split("|"))
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"'(?:[^'\\]|\\.)*'", "''", e)
    e = re.sub(r"\{[^}]*\}", " ", e)      # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)      # ranges, subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\{?\w+\}?", " ", e)     # Grafana variables
    for m in re.finditer(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if not call and word.lower() not in PROMQL_WORDS:
            found.add(word)
    return found


def unknown(expr, known):
    out = []
    for name in sorted(metric_names(expr)):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name not in known and base not in known and name not in BUILT_IN:
            out.append(name)
    return out


def panel_targets(dashboard):
    def walk(panels):
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))
    for p in walk(dashboard["panels"]):
        for t in p.get("targets", []):
            yield p, t


def grafana_json():
    dashboard = json.load(open(DASHBOARD))
    for key in ("uid", "title", "panels", "schemaVersion"):
        if key not in dashboard:
            sys.exit(f"{DASHBOARD}: no `{key}`")
    problems = []
    count = 0
    for p, t in panel_targets(dashboard):
        count += 1
        for ds in (p.get("datasource") or {}, t.get("datasource") or {}):
            if ds.get("uid") != DATASOURCE_UID:
                problems.append(f"panel {p['title']!r}: data source {ds!r}, not uid {DATASOURCE_UID!r}")
        if not t.get("expr", "").strip():
            problems.append(f"panel {p['title']!r} target {t.get('refId')}: no expr")
    provisioned = yaml.safe_load(open(f"{GRAFANA}/provisioning/datasources/prometheus.yml"))
    if DATASOURCE_UID not in [d.get("uid") for d in provisioned.get("datasources", [])]:
        problems.append(f"provisioning/datasources/prometheus.yml: no data source with uid {DATASOURCE_UID!r}")
    yaml.safe_load(open(f"{GRAFANA}/provisioning/dashboards/chatkb.yml"))["providers"]
    if problems:
        sys.exit("\n".join(problems))
    if count == 0:
        sys.exit(f"{DASHBOARD}: no queries")
    print(f"{count} queries")


def grafana_promql():
    """Every panel query as a recording rule, for `promtool check rules` to parse."""
    dashboard = json.load(open(DASHBOARD))
    rules = []
    for p, t in panel_targets(dashboard):
        expr = t["expr"]
        for var, value in (("$__rate_interval", "1m"), ("$__interval", "15s"), ("$__range", "1h")):
            expr = expr.replace(var, value)
        rules.append({"record": f"grafana:panel_{p['id']}_{t['refId']}", "expr": expr})
    yaml.safe_dump({"groups": [{"name": "grafana-panels", "rules": rules}]},
                   open(f"{SCRATCH}/panels.rules.yml", "w"))


def names_exist():
    known = code_metric_names()
    problems = []
    for p, t in panel_targets(json.load(open(DASHBOARD))):
        for name in unknown(t["expr"], known):
            problems.append(f"dashboard panel {p['title']!r}: {name}")
    for group in yaml.safe_load(open(f"{PROM}/alerts.yml"))["groups"]:
        for rule in group["rules"]:
            for name in unknown(rule["expr"], known):
                problems.append(f"alert {rule.get('alert') or rule.get('record')}: {name}")
    if problems:
        sys.exit(f"not in {METRICS_RS} `names`:\n" + "\n".join(problems))


def every_alert_tested():
    alerts = {r["alert"] for g in yaml.safe_load(open(f"{PROM}/alerts.yml"))["groups"]
              for r in g["rules"] if "alert" in r}
    fired = {a["alertname"] for t in yaml.safe_load(open(f"{PROM}/alerts_test.yml"))["tests"]
             for a in t.get("alert_rule_test", []) if a.get("exp_alerts")}
    missing = sorted(alerts - fired)
    if missing:
        sys.exit("no test in alerts_test.yml expects these alerts to fire: " + ", ".join(missing))


def same_jobs():
    def jobs(path):
        return [(j["job_name"], j.get("metrics_path"), [len(s["targets"]) for s in j["static_configs"]])
                for j in yaml.safe_load(open(path))["scrape_configs"]]
    host, docker = jobs(f"{PROM}/prometheus.yml"), jobs(f"{PROM}/prometheus.docker.yml")
    if host != docker:
        sys.exit(f"prometheus.yml jobs {host}\n!= prometheus.docker.yml jobs {docker}")


{"grafana-json": grafana_json, "grafana-promql": grafana_promql, "names": names_exist,
 "tested": every_alert_tested, "jobs": same_jobs}[sys.argv[1]]()
PY
lint() { python3 "$scratch/lint.py" "$1" "$prom" "$grafana" "$metrics_rs" "$scratch"; }

check "prometheus.yml and prometheus.docker.yml scrape the same jobs" lint jobs
check "every alert in alerts.yml has a test that expects it to fire" lint tested
check "Grafana dashboard JSON and provisioning parse; every query uses data source uid prometheus" lint grafana-json
check "Grafana panel queries parse as PromQL (promtool)" \
  bash -c "python3 '$scratch/lint.py' grafana-promql '$prom' '$grafana' '$metrics_rs' '$scratch' && promtool check rules '$scratch/panels.rules.yml'"
check "dashboard and alert queries name only metrics in $metrics_rs names (and up)" lint names

if [ "$failed" != 0 ]; then
  echo "check-prometheus: some checks failed" >&2
  exit 1
fi
echo "check-prometheus: all checks passed"
