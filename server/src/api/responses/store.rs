//! Stored responses (`store: true`, the default): what `previous_response_id`, `GET` and
//! `DELETE /v1/responses/{id}` and `input_items` read. In memory and bounded: at most `max`
//! entries (the oldest is evicted past the bound) and each for `ttl` at most. It lives in this
//! process only: behind a load balancer a follow-up must reach the same replica.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A stored response: the object `GET` returns, this request's own input items, and the
/// response it continued (kept alive by this one even once evicted from the store, so a chain
/// stays whole for as long as its newest response is stored).
#[derive(Debug)]
pub struct StoredResponse {
    pub response: Value,
    pub input_items: Vec<Value>,
    pub previous: Option<Arc<StoredResponse>>,
}

impl StoredResponse {
    /// The whole conversation up to and including this response, oldest first: every earlier
    /// response's input and output items, then this one's. A follow-up's prefix.
    pub fn conversation(&self) -> Vec<Value> {
        let mut chain = vec![self];
        let mut at = self;
        while let Some(previous) = &at.previous {
            chain.push(previous);
            at = previous;
        }
        let mut items = Vec::new();
        for r in chain.into_iter().rev() {
            items.extend(r.input_items.iter().cloned());
            if let Some(output) = r.response.get("output").and_then(Value::as_array) {
                items.extend(output.iter().cloned());
            }
        }
        items
    }
}

/// The store's clock; injected so that tests can move time.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

pub struct ResponseStore {
    max: usize,
    ttl: Duration,
    clock: Clock,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, (Instant, Arc<StoredResponse>)>,
    /// Ids in insertion order (so also in expiry order); a deleted id is removed from it too.
    order: VecDeque<String>,
}

impl ResponseStore {
    pub fn new(max: usize, ttl: Duration) -> Self {
        Self::with_clock(max, ttl, Arc::new(Instant::now))
    }

    /// With `server.responses_store_max` and `server.responses_store_ttl_secs`.
    pub fn from_config(server: &wick_config::ServerConfig) -> Self {
        Self::new(
            server.responses_store_max,
            Duration::from_secs(server.responses_store_ttl_secs),
        )
    }

    pub fn with_clock(max: usize, ttl: Duration, clock: Clock) -> Self {
        Self {
            max,
            ttl,
            clock,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// A panic while the lock was held leaves nothing half-written that matters here (each
    /// operation is a few map updates): the store goes on.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the entries older than the TTL (they are at the front of `order`).
    fn expire(&self, inner: &mut Inner, now: Instant) {
        while let Some(id) = inner.order.front() {
            let expired = inner
                .entries
                .get(id)
                .is_none_or(|(at, _)| now.duration_since(*at) >= self.ttl);
            if !expired {
                break;
            }
            if let Some(id) = inner.order.pop_front() {
                inner.entries.remove(&id);
            }
        }
    }

    /// Stores `response` as `id`, evicting the oldest entries past the bound.
    pub fn insert(&self, id: String, response: Arc<StoredResponse>) {
        let now = (self.clock)();
        let mut inner = self.lock();
        self.expire(&mut inner, now);
        if inner.entries.insert(id.clone(), (now, response)).is_some() {
            inner.order.retain(|o| o != &id);
        }
        inner.order.push_back(id);
        while inner.entries.len() > self.max {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            inner.entries.remove(&oldest);
        }
    }

    /// The stored response `id`, unless it expired or was evicted or deleted.
    pub fn get(&self, id: &str) -> Option<Arc<StoredResponse>> {
        let now = (self.clock)();
        let mut inner = self.lock();
        self.expire(&mut inner, now);
        inner.entries.get(id).map(|(_, r)| r.clone())
    }

    /// Deletes `id`; false when it was not stored.
    pub fn remove(&self, id: &str) -> bool {
        let now = (self.clock)();
        let mut inner = self.lock();
        self.expire(&mut inner, now);
        if inner.entries.remove(id).is_none() {
            return false;
        }
        inner.order.retain(|o| o != id);
        true
    }

    pub fn len(&self) -> usize {
        let now = (self.clock)();
        let mut inner = self.lock();
        self.expire(&mut inner, now);
        inner.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stored(text: &str, previous: Option<Arc<StoredResponse>>) -> Arc<StoredResponse> {
        Arc::new(StoredResponse {
            response: json!({"output": [{"type": "message", "text": format!("out {text}")}]}),
            input_items: vec![json!({"type": "message", "text": format!("in {text}")})],
            previous,
        })
    }

    /// A clock that tests move by hand.
    fn manual_clock() -> (Clock, Arc<Mutex<Duration>>) {
        let start = Instant::now();
        let offset = Arc::new(Mutex::new(Duration::ZERO));
        let read = offset.clone();
        let clock: Clock = Arc::new(move || start + *read.lock().unwrap_or_else(|e| e.into_inner()));
        (clock, offset)
    }

    #[test]
    fn evicts_the_oldest_past_its_bound() {
        let store = ResponseStore::new(2, Duration::from_secs(3600));
        store.insert("a".into(), stored("a", None));
        store.insert("b".into(), stored("b", None));
        store.insert("c".into(), stored("c", None));
        assert!(store.get("a").is_none(), "the oldest is evicted");
        assert!(store.get("b").is_some() && store.get("c").is_some());
        assert_eq!(store.len(), 2);
        // A deleted id frees its place: the next insert evicts nothing.
        assert!(store.remove("b"));
        assert!(!store.remove("b"));
        store.insert("d".into(), stored("d", None));
        assert!(store.get("c").is_some() && store.get("d").is_some());
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn expires_by_ttl() {
        let (clock, offset) = manual_clock();
        let store = ResponseStore::with_clock(10, Duration::from_secs(60), clock);
        store.insert("old".into(), stored("old", None));
        *offset.lock().unwrap() = Duration::from_secs(30);
        store.insert("new".into(), stored("new", None));
        *offset.lock().unwrap() = Duration::from_secs(59);
        assert!(store.get("old").is_some(), "59 s old: still there");
        *offset.lock().unwrap() = Duration::from_secs(60);
        assert!(store.get("old").is_none(), "60 s old: expired");
        assert!(store.get("new").is_some());
        *offset.lock().unwrap() = Duration::from_secs(95);
        assert!(store.get("new").is_none());
        assert!(store.is_empty());
    }

    #[test]
    fn a_conversation_walks_the_chain_even_past_eviction() {
        let store = ResponseStore::new(1, Duration::from_secs(3600));
        let first = stored("1", None);
        store.insert("1".into(), first.clone());
        store.insert("2".into(), stored("2", Some(first)));
        assert!(store.get("1").is_none());
        let texts: Vec<String> = store
            .get("2")
            .map(|r| r.conversation())
            .unwrap_or_default()
            .iter()
            .map(|i| i["text"].as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(texts, ["in 1", "out 1", "in 2", "out 2"]);
    }
}
