//! The boxed future and stream types the object-safe traits of this crate
//! return.

use std::future::Future;
use std::pin::Pin;

use futures_lite::Stream;

/// A boxed, sendable future: what the object-safe traits of this crate
/// ([`TokenSource`](crate::TokenSource), [`CacheLayer`](crate::CacheLayer),
/// [`Runtime`](crate::Runtime), [`Exchange`](crate::Exchange)) return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A boxed, sendable stream: what [`CacheLayer::changes`](crate::CacheLayer::changes)
/// returns.
pub type BoxStream<'a, T> = Pin<Box<dyn Stream<Item = T> + Send + 'a>>;
