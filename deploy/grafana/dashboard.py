#!/usr/bin/env python3
"""Writes deploy/grafana/dashboards/iisand.json, the Grafana dashboard over the
daemon's metrics (server/serve_metrics.c). Edit the panels here and run it again:
    python3 deploy/grafana/dashboard.py
tests/test_deploy.sh checks that the committed JSON is this script's output and that
every metric a query names is in a real daemon's /metrics."""
import json
import os
import sys

DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job", instance=~"$instance"'
# routes that are the API (probes and scrapes left out of rates and ratios)
API = 'route!~"metrics|healthz|livez|readyz"'


def q(expr, legend="", instant=False):
    t = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto"}
    if instant:
        t["instant"] = True
    return t


def quantiles(metric, extra=""):
    """p50 / p90 / p99 of a histogram, over the selected instances"""
    lab = SEL + (", " + extra if extra else "")
    return [q(f"histogram_quantile({p}, sum by (le) (rate({metric}_bucket{{{lab}}}[$__rate_interval])))",
              f"p{int(p * 100)}") for p in (0.5, 0.9, 0.99)]


class Board:
    def __init__(self):
        self.panels, self.y, self.x, self.row_h, self.next_id = [], 0, 0, 0, 1

    def _id(self):
        self.next_id += 1
        return self.next_id - 1

    def row(self, title):
        if self.x:
            self.y, self.x = self.y + self.row_h, 0
        self.panels.append({"type": "row", "id": self._id(), "title": title, "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.y += 1
        self.row_h = 0

    def _place(self, w, h):
        if self.x + w > 24:
            self.y, self.x, self.row_h = self.y + self.row_h, 0, 0
        pos = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def stat(self, title, targets, unit="short", w=4, thresholds=None, desc="", mappings=None,
             text="auto"):
        steps = thresholds or [{"color": "green", "value": None}]
        self.panels.append({
            "type": "stat", "id": self._id(), "title": title, "description": desc,
            "datasource": DS, "gridPos": self._place(w, 4), "targets": targets,
            "fieldConfig": {"defaults": {"unit": unit, "mappings": mappings or [],
                                         "thresholds": {"mode": "absolute", "steps": steps}},
                            "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "background", "graphMode": "none", "textMode": text,
                        "justifyMode": "auto", "orientation": "auto"}})

    def series(self, title, targets, unit="short", w=12, desc="", stack=False, minimum=0):
        custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                  "spanNulls": False,
                  "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
        defaults = {"unit": unit, "custom": custom}
        if minimum is not None:
            defaults["min"] = minimum
        self.panels.append({
            "type": "timeseries", "id": self._id(), "title": title, "description": desc,
            "datasource": DS, "gridPos": self._place(w, 8), "targets": targets,
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "desc"}}})


RED_ABOVE = lambda v: [{"color": "green", "value": None}, {"color": "red", "value": v}]


def overview(b):
    b.row("Overview")
    b.stat("Up", [q(f"min(up{{{SEL}}})")], w=3, thresholds=[
        {"color": "red", "value": None}, {"color": "green", "value": 1}],
        mappings=[{"type": "value", "options": {"0": {"text": "down"}, "1": {"text": "up"}}}],
        desc="Prometheus reaches /metrics on every selected instance")
    b.stat("Model version", [q(f"max(iisan_model_version{{{SEL}}})")], w=3, thresholds=[
        {"color": "red", "value": None}, {"color": "green", "value": 1}],
        mappings=[{"type": "value", "options": {"0": {"text": "none"}}}],
        desc="The checkpoint version served (none: /recommend answers 503 no_model)")
    b.stat("API requests/s", [q(f"sum(rate(iisan_http_requests_total{{{SEL}, {API}}}[$__rate_interval]))")],
           unit="reqps", w=4)
    b.stat("5xx ratio", [q(
        f"sum(rate(iisan_http_errors_total{{{SEL}, class=\"5xx\"}}[$__rate_interval]))"
        f" / sum(rate(iisan_http_requests_total{{{SEL}, {API}}}[$__rate_interval]))")],
        unit="percentunit", w=4, thresholds=RED_ABOVE(0.01))
    b.stat("/recommend p99", [q(
        "histogram_quantile(0.99, sum by (le) (rate(iisan_http_request_duration_seconds_bucket"
        f"{{{SEL}, route=\"recommend\"}}[$__rate_interval])))")],
        unit="s", w=4, thresholds=RED_ABOVE(0.1))
    b.stat("In flight", [q(f"sum(iisan_http_in_flight{{{SEL}}})")], w=3)
    b.stat("Interactions pending", [q(f"sum(iisan_interactions_pending{{{SEL}}})")], w=3,
           desc="Accepted interactions waiting for their group commit")
    b.stat("Version", [q(f"max by (version, git) (iisan_build_info{{{SEL}}})", "{{version}} ({{git}})",
                         instant=True)], w=6, text="name",
           desc="iisan --version of the running daemons")
    b.stat("Uptime", [q(f"min(time() - process_start_time_seconds{{{SEL}}})")], unit="s", w=3)
    b.stat("Store map use", [q(f"max(iisan_store_used_bytes{{{SEL}}} / iisan_store_map_bytes{{{SEL}}})")],
           unit="percentunit", w=3, thresholds=RED_ABOVE(0.95),
           desc="Used bytes of the LMDB map; it doubles when a commit needs more, if the disk has room")
    b.stat("Open connections", [q(f"sum(iisan_http_connections_open{{{SEL}}})")], w=3)
    b.stat("Jobs running", [q(f"sum(iisan_retrain_jobs_running{{{SEL}}})")], w=3,
           desc="Retraining jobs running (at most one per daemon)")
    b.stat("Failed jobs (24 h)", [q(
        f"sum(increase(iisan_retrain_jobs_total{{{SEL}, state=\"failed\"}}[24h]))")], w=3,
        thresholds=RED_ABOVE(1))
    b.stat("Backend failures", [q(f"max(iisan_backend_failures{{{SEL}}})")], w=3,
           thresholds=RED_ABOVE(1),
           desc="Sticky: once not 0, /recommend answers 503 backend_failed until a restart")


def http(b):
    b.row("HTTP")
    b.series("Requests/s by route", [q(
        f"sum by (route) (rate(iisan_http_requests_total{{{SEL}}}[$__rate_interval]))", "{{route}}")],
        unit="reqps")
    b.series("Errors/s by route and class", [q(
        f"sum by (route, class) (rate(iisan_http_errors_total{{{SEL}}}[$__rate_interval])) > 0",
        "{{route}} {{class}}")], unit="reqps")
    b.series("Responses/s by status code", [q(
        f"sum by (code) (rate(iisan_http_requests_total{{{SEL}, {API}}}[$__rate_interval]))", "{{code}}")],
        unit="reqps", stack=True)
    b.series("p99 latency by route", [q(
        "histogram_quantile(0.99, sum by (route, le) (rate(iisan_http_request_duration_seconds_bucket"
        f"{{{SEL}, {API}}}[$__rate_interval])))", "{{route}}")], unit="s",
        desc="From the request's headers to the end of its response (commit waits included)")


def recommend(b):
    b.row("Recommendations")
    b.series("/recommend latency", quantiles("iisan_http_request_duration_seconds", 'route="recommend"'),
             unit="s")
    b.series("Batch size", [
        q(f"sum(rate(iisan_recommend_batched_requests_total{{{SEL}}}[$__rate_interval]))"
          f" / sum(rate(iisan_recommend_batches_total{{{SEL}}}[$__rate_interval]))", "mean")]
        + quantiles("iisan_recommend_batch_size")[1:]
        + [q(f"max(iisan_recommend_batch_max{{{SEL}}})", "largest so far")],
        desc="Requests computed together per batch (max_batch caps it)")
    b.series("Batches/s and popularity fallbacks/s", [
        q(f"sum(rate(iisan_recommend_batches_total{{{SEL}}}[$__rate_interval]))", "batches"),
        q(f"sum(rate(iisan_recommend_fallback_total{{{SEL}}}[$__rate_interval]))", "fallbacks (empty history)")],
        unit="ops")
    b.series("Model version", [q(f"iisan_model_version{{{SEL}}}", "{{instance}}")], minimum=None)


def interactions(b):
    b.row("Interactions")
    b.series("Interactions committed/s", [q(
        f"sum(rate(iisan_interactions_committed_total{{{SEL}}}[$__rate_interval]))", "committed")],
        unit="ops")
    b.series("Group commits/s", [
        q(f"sum(rate(iisan_commit_batches_total{{{SEL}}}[$__rate_interval]))", "commits"),
        q(f"sum(rate(iisan_commit_failures_total{{{SEL}}}[$__rate_interval]))", "failed")], unit="ops")
    b.series("Commit duration (fsync included)", quantiles("iisan_commit_duration_seconds"), unit="s")
    b.series("Pending and in flight", [
        q(f"sum(iisan_interactions_pending{{{SEL}}})", "interactions pending"),
        q(f"sum(iisan_http_in_flight{{{SEL}}})", "requests in flight")])


def models_jobs(b):
    b.row("Models and retraining")
    b.series("Model loads", [q(
        f"sum by (result) (increase(iisan_model_loads_total{{{SEL}}}[$__rate_interval]))", "{{result}}")],
        desc="Startup, SIGHUP reloads, promoted jobs, rollbacks")
    b.series("Model load duration and loading", [
        q(f"max(iisan_model_load_last_seconds{{{SEL}}})", "last load (s)"),
        q(f"max(iisan_model_loading{{{SEL}}})", "loading")],
        desc="A load computes every item's embedding; /readyz answers 503 while the first one runs")
    b.series("Retraining jobs ended", [q(
        f"sum by (state) (increase(iisan_retrain_jobs_total{{{SEL}}}[$__rate_interval]))", "{{state}}")],
        stack=True)
    b.series("Retraining: running and busy share", [
        q(f"sum(iisan_retrain_jobs_running{{{SEL}}})", "running"),
        q(f"sum(rate(iisan_retrain_job_seconds_total{{{SEL}}}[$__rate_interval]))", "busy share (ended jobs)")])


def store_process(b):
    b.row("Store and process")
    b.series("Store map", [
        q(f"max(iisan_store_map_bytes{{{SEL}}})", "map size"),
        q(f"max(iisan_store_used_bytes{{{SEL}}})", "used")], unit="bytes")
    b.series("Connections", [
        q(f"sum(iisan_http_connections_open{{{SEL}}})", "open"),
        q(f"sum(iisan_http_in_flight{{{SEL}}})", "requests in flight")],
        desc="Open client connections (connection_limit caps them) and requests being handled")
    b.series("Request body memory", [q(f"sum(iisan_http_body_bytes{{{SEL}}})", "held")],
             unit="bytes", desc="Request bodies being received or served")
    b.series("CPU", [q(f"sum by (instance) (rate(process_cpu_seconds_total{{{SEL}}}[$__rate_interval]))",
                       "{{instance}}")], unit="percentunit", desc="Cores used (1 = 100% of one core)")
    b.series("Resident memory", [q(f"process_resident_memory_bytes{{{SEL}}}", "{{instance}}")],
             unit="bytes")
    b.series("Open file descriptors", [q(f"process_open_fds{{{SEL}}}", "{{instance}}")])


def dashboard():
    b = Board()
    overview(b)
    http(b)
    recommend(b)
    interactions(b)
    models_jobs(b)
    store_process(b)
    return {
        "uid": "iisand", "title": "iisand", "tags": ["iisand"], "editable": True,
        "schemaVersion": 39, "version": 1, "graphTooltip": 1, "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"}, "timezone": "",
        "description": "The IISAN recommendation daemon (deploy/grafana/dashboard.py writes this file)",
        "annotations": {"list": []}, "links": [],
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "refresh": 1},
            # the scrape job(s) of the daemon: "iisand" in deploy/prometheus/prometheus.yml
            {"name": "job", "label": "Job", "type": "query", "datasource": DS,
             "query": {"query": "label_values(iisan_model_version, job)", "refId": "job"},
             "definition": "label_values(iisan_model_version, job)", "includeAll": False,
             "multi": False, "current": {"text": "iisand", "value": "iisand"}, "refresh": 2,
             "sort": 1, "hide": 0},
            {"name": "instance", "label": "Instance", "type": "query", "datasource": DS,
             "query": {"query": 'label_values(up{job=~"$job"}, instance)', "refId": "instance"},
             "definition": 'label_values(up{job=~"$job"}, instance)', "includeAll": True,
             "multi": True, "allValue": ".*", "current": {}, "refresh": 2, "sort": 1, "hide": 0}]},
        "panels": b.panels,
    }


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "dashboards", "iisand.json")
    with open(out, "w") as f:
        json.dump(dashboard(), f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
