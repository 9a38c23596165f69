//! The request metrics every function records (X3), through handles kept per route and
//! status. `counter!(name, labels...)` builds its key from owned labels, looks it up in
//! the registry and returns a new handle on every call: about five allocations per
//! metric and request. A kept handle costs two lookups in small maps (route, status).

use foldhash::HashMap;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use metrics::{Counter, Histogram};

use crate::observability::metrics::names;

/// The handles of one route; routes are the router's templates (and `unmatched`), so
/// the map stays as small as the router.
struct RouteHandles {
    duration: Histogram,
    server_errors: Counter,
    by_status: HashMap<u16, Counter>,
}

/// `http_requests_total`, `http_request_duration_seconds` and `http_server_errors_total`
/// of one function.
pub(super) struct RequestMetrics {
    function: String,
    routes: RwLock<HashMap<String, RouteHandles>>,
}

impl RequestMetrics {
    pub(super) fn new(function: &str) -> Self {
        // Handles taken before the recorder is installed would count nowhere.
        crate::observability::metrics::install();
        Self {
            function: function.to_string(),
            routes: RwLock::new(HashMap::default()),
        }
    }

    pub(super) fn record(&self, route: &str, status: u16, elapsed: Duration) {
        let routes = self.routes.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(handles) = routes.get(route) {
            if let Some(requests) = handles.by_status.get(&status) {
                Self::count(handles, requests, status, elapsed);
                return;
            }
        }
        drop(routes);
        let mut routes = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        let handles = routes
            .entry(route.to_string())
            .or_insert_with(|| RouteHandles {
                duration: metrics::histogram!(names::HTTP_REQUEST_DURATION_SECONDS, "function" => self.function.clone(), "route" => route.to_string()),
                server_errors: metrics::counter!(names::HTTP_SERVER_ERRORS_TOTAL, "function" => self.function.clone(), "route" => route.to_string()),
                by_status: HashMap::default(),
            });
        let requests = handles.by_status.entry(status).or_insert_with(|| {
            metrics::counter!(names::HTTP_REQUESTS_TOTAL, "function" => self.function.clone(), "route" => route.to_string(), "status" => status.to_string())
        });
        let requests = requests.clone();
        Self::count(handles, &requests, status, elapsed);
    }

    fn count(handles: &RouteHandles, requests: &Counter, status: u16, elapsed: Duration) {
        requests.increment(1);
        handles.duration.record(elapsed.as_secs_f64());
        if status >= 500 {
            handles.server_errors.increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::observability::metrics::series_value as sample;

    #[test]
    fn every_request_counts_through_the_kept_handles() {
        let metrics = RequestMetrics::new("handles-test");
        let handle = crate::observability::metrics::install();
        let ok = r#"http_requests_total{function="handles-test",route="/a",status="200"}"#;
        let failed = r#"http_requests_total{function="handles-test",route="/a",status="503"}"#;
        let errors = r#"http_server_errors_total{function="handles-test",route="/a"}"#;
        let other = r#"http_requests_total{function="handles-test",route="/b",status="200"}"#;
        let durations =
            r#"http_request_duration_seconds_count{function="handles-test",route="/a"}"#;
        for _ in 0..3 {
            metrics.record("/a", 200, Duration::from_millis(2));
        }
        metrics.record("/a", 503, Duration::from_millis(2));
        metrics.record("/a", 503, Duration::from_millis(2));
        metrics.record("/b", 200, Duration::from_millis(2));
        let rendered = handle.render();
        assert_eq!(sample(&rendered, ok), 3.0, "{rendered}");
        assert_eq!(sample(&rendered, failed), 2.0);
        assert_eq!(sample(&rendered, errors), 2.0);
        assert_eq!(sample(&rendered, other), 1.0);
        assert_eq!(sample(&rendered, durations), 5.0);
    }
}
