//! The xDS resource types Sentinel subscribes to, by type URL.

pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// The four types in make-before-break order: clusters and their endpoints before the
/// listeners and routes that point at them.
pub const ORDER: [&str; 4] = [CLUSTER, ENDPOINT, LISTENER, ROUTE];

/// LDS and CDS are subscribed by wildcard; RDS and EDS by name.
pub fn is_wildcard(type_url: &str) -> bool {
    type_url == LISTENER || type_url == CLUSTER
}

/// Short name for logs and errors.
pub fn short(type_url: &str) -> &str {
    match type_url {
        LISTENER => "LDS",
        ROUTE => "RDS",
        CLUSTER => "CDS",
        ENDPOINT => "EDS",
        other => other,
    }
}
