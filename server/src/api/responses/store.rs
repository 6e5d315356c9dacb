//! Stored responses (`store: true`, the default): what `previous_response_id`, `item_reference`
//! input items, `GET` and `DELETE /v1/responses/{id}` and `input_items` read. In memory and
//! bounded three ways: at most `max` entries, at most `max_bytes` bytes (the oldest are evicted
//! past either bound) and each for `ttl` at most. It lives in this process only: behind a load
//! balancer a follow-up must reach the same replica.

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
    /// What this response keeps in memory, as JSON bytes: its own response and input items,
    /// plus every earlier response of its chain (see [`StoredResponse::new`]).
    bytes: usize,
}

impl StoredResponse {
    /// A response to store. Its size counts the whole chain it keeps alive: an earlier response
    /// evicted from the store still lives on through this one, so charging only this response's
    /// own items would let a long conversation hold more than the byte bound. (While the earlier
    /// responses are stored too they are counted twice: the bound is an upper bound on memory.)
    pub fn new(response: Value, input_items: Vec<Value>, previous: Option<Arc<StoredResponse>>) -> Self {
        let own = json_len(&response) + input_items.iter().map(json_len).sum::<usize>();
        let bytes = own + previous.as_ref().map_or(0, |p| p.bytes);
        Self {
            response,
            input_items,
            previous,
            bytes,
        }
    }

    /// The bytes this response is charged in the store.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

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
            items.extend(r.output_items().iter().cloned());
        }
        items
    }

    fn output_items(&self) -> &[Value] {
        self.response
            .get("output")
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }

    /// Its own items (output, then input) that have an id: what `item_reference` can name.
    fn item_ids(&self) -> impl Iterator<Item = &str> {
        self.output_items()
            .iter()
            .chain(&self.input_items)
            .filter_map(|i| i.get("id")?.as_str())
    }

    /// Its own item `id` (an output item first, then an input item).
    fn item(&self, id: &str) -> Option<&Value> {
        self.output_items()
            .iter()
            .chain(&self.input_items)
            .find(|i| i.get("id").and_then(Value::as_str) == Some(id))
    }
}

/// A value's size as compact JSON (what it would take to send it).
fn json_len(value: &Value) -> usize {
    serde_json::to_vec(value).map_or(0, |v| v.len())
}

/// The store's clock; injected so that tests can move time.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// The store's bounds (`server.responses_store_*`).
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    pub max: usize,
    pub max_bytes: usize,
    pub ttl: Duration,
}

pub struct ResponseStore {
    limits: StoreLimits,
    clock: Clock,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, (Instant, Arc<StoredResponse>)>,
    /// Ids in insertion order (so also in expiry order); a deleted id is removed from it too.
    order: VecDeque<String>,
    /// The sum of the stored responses' [`StoredResponse::bytes`].
    bytes: usize,
    /// Item id -> the stored responses that have it, oldest first (a referenced item is an
    /// input item of the response that referenced it too, with the same id).
    items: HashMap<String, Vec<String>>,
}

impl Inner {
    /// Removes `id` and its items from the maps; the caller keeps `order` in step.
    fn drop_entry(&mut self, id: &str) -> bool {
        let Some((_, stored)) = self.entries.remove(id) else {
            return false;
        };
        self.bytes = self.bytes.saturating_sub(stored.bytes);
        for item in stored.item_ids() {
            if let Some(owners) = self.items.get_mut(item) {
                owners.retain(|owner| owner != id);
                if owners.is_empty() {
                    self.items.remove(item);
                }
            }
        }
        true
    }

    fn pop_oldest(&mut self) -> bool {
        match self.order.pop_front() {
            Some(oldest) => {
                self.drop_entry(&oldest);
                true
            }
            None => false,
        }
    }
}

impl ResponseStore {
    pub fn new(limits: StoreLimits) -> Self {
        Self::with_clock(limits, Arc::new(Instant::now))
    }

    /// With `server.responses_store_max`, `_max_bytes` and `_ttl_secs`.
    pub fn from_config(server: &wick_config::ServerConfig) -> Self {
        Self::new(StoreLimits {
            max: server.responses_store_max,
            max_bytes: server.responses_store_max_bytes,
            ttl: Duration::from_secs(server.responses_store_ttl_secs),
        })
    }

    pub fn with_clock(limits: StoreLimits, clock: Clock) -> Self {
        Self {
            limits,
            clock,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// A panic while the lock was held leaves nothing half-written that matters here (each
    /// operation is a few map updates): the store goes on.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The store at `now`: the entries older than the TTL (at the front of `order`) dropped.
    fn at(&self, now: Instant) -> MutexGuard<'_, Inner> {
        let mut inner = self.lock();
        while let Some(id) = inner.order.front() {
            let expired = inner
                .entries
                .get(id)
                .is_none_or(|(at, _)| now.duration_since(*at) >= self.limits.ttl);
            if !expired || !inner.pop_oldest() {
                break;
            }
        }
        inner
    }

    /// Stores `response` as `id`, evicting the oldest entries past the bounds. A response
    /// larger than the byte bound on its own is not stored (false): evicting everything else
    /// would not make room for it.
    pub fn insert(&self, id: String, response: Arc<StoredResponse>) -> bool {
        if response.bytes > self.limits.max_bytes {
            tracing::warn!(
                id = %id,
                bytes = response.bytes,
                "a response (with its conversation) larger than server.responses_store_max_bytes is not stored"
            );
            return false;
        }
        let now = (self.clock)();
        let mut inner = self.at(now);
        if inner.drop_entry(&id) {
            inner.order.retain(|o| o != &id);
        }
        while inner.entries.len() >= self.limits.max || inner.bytes + response.bytes > self.limits.max_bytes {
            if !inner.pop_oldest() {
                break;
            }
        }
        inner.bytes += response.bytes;
        for item in response.item_ids() {
            let owners = inner.items.entry(item.to_string()).or_default();
            // An id twice in one response is one owner.
            if owners.last() != Some(&id) {
                owners.push(id.clone());
            }
        }
        inner.entries.insert(id.clone(), (now, response));
        inner.order.push_back(id);
        true
    }

    /// The stored response `id`, unless it expired or was evicted or deleted.
    pub fn get(&self, id: &str) -> Option<Arc<StoredResponse>> {
        let inner = self.at((self.clock)());
        inner.entries.get(id).map(|(_, r)| r.clone())
    }

    /// The item `id` of a stored response (an output or input item), for `item_reference`.
    pub fn item(&self, id: &str) -> Option<Value> {
        let inner = self.at((self.clock)());
        let owner = inner.items.get(id)?.last()?;
        let (_, stored) = inner.entries.get(owner)?;
        stored.item(id).cloned()
    }

    /// Deletes `id`; false when it was not stored.
    pub fn remove(&self, id: &str) -> bool {
        let mut inner = self.at((self.clock)());
        if !inner.drop_entry(id) {
            return false;
        }
        inner.order.retain(|o| o != id);
        true
    }

    pub fn len(&self) -> usize {
        self.at((self.clock)()).entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes held, as charged (see [`StoredResponse::new`]); never above `max_bytes`.
    pub fn bytes(&self) -> usize {
        self.at((self.clock)()).bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stored(text: &str, previous: Option<Arc<StoredResponse>>) -> Arc<StoredResponse> {
        Arc::new(StoredResponse::new(
            json!({"output": [{"id": format!("msg_{text}"), "type": "message", "text": format!("out {text}")}]}),
            vec![json!({"id": format!("in_{text}"), "type": "message", "text": format!("in {text}")})],
            previous,
        ))
    }

    fn limits(max: usize, max_bytes: usize, ttl_secs: u64) -> StoreLimits {
        StoreLimits {
            max,
            max_bytes,
            ttl: Duration::from_secs(ttl_secs),
        }
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
        let store = ResponseStore::new(limits(2, 1 << 20, 3600));
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
        let store = ResponseStore::with_clock(limits(10, 1 << 20, 60), clock);
        store.insert("old".into(), stored("old", None));
        *offset.lock().unwrap() = Duration::from_secs(30);
        store.insert("new".into(), stored("new", None));
        *offset.lock().unwrap() = Duration::from_secs(59);
        assert!(store.get("old").is_some(), "59 s old: still there");
        *offset.lock().unwrap() = Duration::from_secs(60);
        assert!(store.get("old").is_none(), "60 s old: expired");
        assert!(store.item("msg_old").is_none(), "its items went with it");
        assert!(store.get("new").is_some());
        *offset.lock().unwrap() = Duration::from_secs(95);
        assert!(store.get("new").is_none());
        assert!(store.is_empty());
        assert_eq!(store.bytes(), 0);
    }

    #[test]
    fn a_conversation_walks_the_chain_even_past_eviction() {
        let store = ResponseStore::new(limits(1, 1 << 20, 3600));
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

    #[test]
    fn a_response_is_charged_its_json_bytes_and_its_chains() {
        let first = stored("1", None);
        let own = serde_json::to_vec(&first.response).unwrap().len()
            + serde_json::to_vec(&first.input_items[0]).unwrap().len();
        assert_eq!(first.bytes(), own);
        let second = stored("2", Some(first.clone()));
        assert_eq!(
            second.bytes(),
            2 * own,
            "the same sizes, plus the first it keeps alive"
        );
    }

    #[test]
    fn the_byte_bound_evicts_the_oldest_and_is_never_exceeded() {
        let one = stored("x", None).bytes();
        // Room for three of these, whatever the entry count allows.
        let store = ResponseStore::new(limits(1000, 3 * one + one / 2, 3600));
        for name in ["a", "b", "c", "d"] {
            assert!(store.insert(name.into(), stored(name, None)));
            assert!(store.bytes() <= 3 * one + one / 2);
        }
        assert!(store.get("a").is_none(), "evicted for bytes");
        assert_eq!(store.len(), 3);
        assert_eq!(store.bytes(), 3 * one);
        // Responses of every size, chains among them: the bound holds after every insert, and
        // the newest is always there (each fits on its own).
        let bound = 20 * one;
        let store = ResponseStore::new(limits(1000, bound, 3600));
        let (mut previous, mut newest, mut refused) = (None, String::new(), 0);
        for i in 0..300usize {
            let text = "w".repeat(i * 37 % 500);
            let r = stored(
                &format!("{i}{text}"),
                if i % 4 == 0 { None } else { previous.take() },
            );
            let id = format!("r{i}");
            if r.bytes() > bound {
                assert!(!store.insert(id.clone(), r.clone()), "too large on its own");
                assert!(store.get(&id).is_none());
                refused += 1;
            } else {
                assert!(store.insert(id.clone(), r.clone()));
                assert!(store.get(&id).is_some(), "the newest stays");
                newest = id;
            }
            assert!(store.bytes() <= bound, "{} > {bound} after {i}", store.bytes());
            previous = Some(r);
        }
        assert!(refused > 0, "long chains outgrow the bound");
        // Deletion gives the bytes back.
        let before = store.bytes();
        let newest_bytes = store.get(&newest).map(|r| r.bytes()).unwrap_or_default();
        assert!(newest_bytes > 0 && store.remove(&newest));
        assert_eq!(store.bytes(), before - newest_bytes);
    }

    #[test]
    fn items_are_found_by_id_until_their_response_goes() {
        let store = ResponseStore::new(limits(2, 1 << 20, 3600));
        store.insert("a".into(), stored("a", None));
        assert_eq!(store.item("msg_a").unwrap()["text"], "out a");
        assert_eq!(store.item("in_a").unwrap()["text"], "in a");
        assert!(store.item("msg_b").is_none());
        store.insert("b".into(), stored("b", None));
        store.insert("c".into(), stored("c", None));
        assert!(store.item("msg_a").is_none(), "evicted with its response");
        assert!(store.item("msg_b").is_some());
        store.remove("b");
        assert!(store.item("msg_b").is_none(), "deleted with its response");
        // An item in two responses (the second referenced it) lives while either does.
        let c = store.get("c").unwrap();
        let again = StoredResponse::new(json!({"output": []}), c.output_items().to_vec(), None);
        store.insert("e".into(), Arc::new(again));
        assert!(store.remove("c"));
        assert_eq!(store.item("msg_c").unwrap()["text"], "out c");
        assert!(store.remove("e"));
        assert!(store.item("msg_c").is_none());
    }
}
