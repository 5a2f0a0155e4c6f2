//! Rate limits on the starters, per client: a token bucket per client (`429` with `Retry-After`
//! when it is empty). A client is the authenticated [`Caller`] (an API key or a token's subject,
//! wherever it calls from), else its address. Behind a reverse proxy, the address is the one the
//! proxy appended to `X-Forwarded-For` (only when the operator says the proxy is trusted).

use crate::KilnHttp;
use crate::auth::Caller;
use crate::problem::Problem;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many requests a client may make: `per_second` sustained, `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Requests per second, sustained.
    pub per_second: f64,
    /// Requests allowed at once after a quiet spell.
    pub burst: u32,
}

/// Buckets kept before idle (full) ones are dropped; dropping a full bucket changes nothing.
const MAX_TRACKED_CLIENTS: usize = 100_000;

/// The token buckets of every client seen recently.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    limit: RateLimit,
    buckets: Mutex<Buckets>,
}

/// Whose bucket a request takes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Client {
    /// An authenticated caller ([`Caller::id`]).
    Caller(String),
    /// An anonymous client's address.
    Address(IpAddr),
}

#[derive(Debug, Default)]
struct Buckets {
    by_client: HashMap<Client, Bucket>,
    /// When the map, full, was last swept of idle buckets (at most once a second).
    swept_at: Option<Instant>,
}

/// Where clients beyond [`MAX_TRACKED_CLIENTS`] share one bucket until idle ones are swept.
const OVERFLOW: Client = Client::Address(IpAddr::V4(Ipv4Addr::BROADCAST));

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    pub(crate) fn new(limit: RateLimit) -> RateLimiter {
        RateLimiter { limit, buckets: Mutex::new(Buckets::default()) }
    }

    /// Takes a token for `client` at `now`, or says how long until one is available.
    fn take(&self, client: Client, now: Instant) -> Result<(), Duration> {
        let RateLimit { per_second, burst } = self.limit;
        let burst = f64::from(burst.max(1));
        let refill =
            |bucket: &Bucket| (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * per_second).min(burst);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let Buckets { by_client, swept_at } = &mut *buckets;
        let mut client = client;
        if by_client.len() >= MAX_TRACKED_CLIENTS && !by_client.contains_key(&client) {
            if swept_at.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1)) {
                by_client.retain(|_, bucket| refill(bucket) < burst);
                *swept_at = Some(now);
            }
            if by_client.len() >= MAX_TRACKED_CLIENTS {
                client = OVERFLOW;
            }
        }
        let bucket = by_client.entry(client).or_insert(Bucket { tokens: burst, at: now });
        let tokens = refill(bucket);
        if tokens >= 1.0 {
            *bucket = Bucket { tokens: tokens - 1.0, at: now };
            Ok(())
        } else {
            *bucket = Bucket { tokens, at: now };
            let wait = (1.0 - tokens) / per_second;
            Err(Duration::try_from_secs_f64(wait).unwrap_or(Duration::MAX))
        }
    }
}

/// Who a request comes from: the rightmost `X-Forwarded-For` address when the proxy is
/// trusted (what the proxy itself saw), else the connection's peer; an IPv6 client by its /64
/// (one host usually holds a whole /64).
fn client_address(request: &Request, trust_forwarded_for: bool) -> IpAddr {
    let forwarded = || rightmost_forwarded_for(request.headers());
    let peer = || request.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(peer)| peer.ip());
    let address = trust_forwarded_for.then(forwarded).flatten().or_else(peer).unwrap_or_else(|| {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!("requests carry no peer address (ConnectInfo): every client shares one rate-limit bucket");
        });
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    });
    match address {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        other => other,
    }
}

fn rightmost_forwarded_for(headers: &HeaderMap) -> Option<IpAddr> {
    let last = headers.get_all("x-forwarded-for").iter().next_back()?;
    last.to_str().ok()?.rsplit(',').next()?.trim().parse().ok()
}

/// Middleware of the starters: `429` problem+json with `Retry-After` when the client's bucket
/// is empty.
pub(crate) async fn limit_starters(State(http): State<KilnHttp>, request: Request, next: Next) -> Response {
    let client = match request.extensions().get::<Caller>() {
        Some(caller) => Client::Caller(caller.id.clone()),
        None => Client::Address(client_address(&request, http.options().trust_forwarded_for)),
    };
    match charge(&http, client) {
        Ok(()) => next.run(request).await,
        Err(limited) => limited.into_response(),
    }
}

/// Takes a token from the bucket of the request's address (for a request refused before it
/// has a caller), or answers `429`.
pub(crate) fn charge_address(http: &KilnHttp, request: &Request) -> Result<(), Problem> {
    charge(http, Client::Address(client_address(request, http.options().trust_forwarded_for)))
}

fn charge(http: &KilnHttp, client: Client) -> Result<(), Problem> {
    let Some(limiter) = &http.inner.starter_limiter else { return Ok(()) };
    limiter.take(client, Instant::now()).map_err(|wait| {
        let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
        let detail = format!("too many requests from this client; retry in {seconds} s");
        Problem::new(StatusCode::TOO_MANY_REQUESTS, detail).retry_after(seconds)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let limiter = RateLimiter::new(RateLimit { per_second: 2.0, burst: 3 });
        let (a, b) = (Client::Address([10, 0, 0, 1].into()), Client::Caller("key:a".into()));
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.take(a.clone(), start).is_ok());
        }
        let wait = limiter.take(a.clone(), start).unwrap_err();
        assert!((Duration::from_millis(490)..=Duration::from_millis(510)).contains(&wait), "{wait:?}");
        assert!(limiter.take(b, start).is_ok(), "another client has its own bucket");
        assert!(limiter.take(a.clone(), start + Duration::from_millis(500)).is_ok(), "refilled at 2/s");
        assert!(limiter.take(a, start + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn a_tiny_rate_does_not_overflow_the_wait() {
        let limiter = RateLimiter::new(RateLimit { per_second: 1e-20, burst: 1 });
        let client = Client::Address([10, 0, 0, 1].into());
        assert!(limiter.take(client.clone(), Instant::now()).is_ok());
        assert_eq!(limiter.take(client, Instant::now()), Err(Duration::MAX));
    }

    #[test]
    fn the_proxy_s_own_entry_names_the_client_only_when_trusted() {
        let mut request = Request::new(axum::body::Body::empty());
        request
            .headers_mut()
            .insert("x-forwarded-for", "6.6.6.6, 203.0.113.9".parse().unwrap_or_else(|_| unreachable!()));
        request.extensions_mut().insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 1], 4000))));
        assert_eq!(client_address(&request, true), IpAddr::from([203, 0, 113, 9]));
        assert_eq!(client_address(&request, false), IpAddr::from([10, 0, 0, 1]));
        request.headers_mut().insert("x-forwarded-for", "2001:db8::1:2:3:4".parse().unwrap_or_else(|_| unreachable!()));
        let v6: IpAddr = "2001:db8::".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(client_address(&request, true), v6, "an IPv6 client is its /64");
    }
}
