//! Name resolution: an application name becomes the platform's id ([`Target`]), either from Kubernetes
//! pod labels held in a watch cache (`pods.rs`) or through the platform's own API.

pub mod pods;

use std::sync::Arc;

use crate::platform::{Platform, Target};

pub use crate::model::{ResolveError as Error, sanitize, unique};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How one platform's application names are resolved.
#[derive(Clone)]
pub enum Resolver {
    Api(Arc<dyn Platform>),
    Pods(pods::PodIndex),
}

impl Resolver {
    pub async fn resolve(&self, application: &str) -> Result<Target> {
        match self {
            Resolver::Api(platform) => platform.resolve(application).await,
            Resolver::Pods(index) => index.resolve(application),
        }
    }
}
