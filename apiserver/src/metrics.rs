//! API metrics in the Prometheus text format: requests by verb, resource and code, request
//! latency, and open watches.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: String,
    pub resource: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    pub verb: String,
    pub resource: String,
}

pub struct ApiMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<VerbLabels, Histogram>,
    pub watches: Gauge,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        ApiMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16))),
            watches: Gauge::default(),
        }
    }
}

impl ApiMetrics {
    pub fn register(&self, reg: &mut Registry) {
        reg.register("apiserver_request", "API requests by verb, resource and HTTP code", self.requests.clone());
        reg.register("apiserver_request_duration_seconds", "API request latency by verb and resource (watches: time to start)", self.latency.clone());
        reg.register("apiserver_registered_watchers", "Open watch streams", self.watches.clone());
    }

    pub fn encode(&self) -> String {
        let mut reg = Registry::default();
        self.register(&mut reg);
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        out
    }
}
