//! In-process tests of the mock control plane, driven by tonic clients from envoy-types the
//! way a proxy drives it. One test binary (modules below) keeps link time down.

mod common;
mod delta;
mod http;
mod services;
mod sotw;
