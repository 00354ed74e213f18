//! `GET /v2/sandboxes` (and the deprecated `GET /sandboxes`): the caller's running sandboxes,
//! filtered by metadata, state, template and start time, ordered by start time, in pages whose
//! continuation is the `x-next-token` header (an opaque cursor: the start time and id of the
//! last sandbox shown, so a page boundary survives sandboxes ending in between).

use super::control::{E2bError, bad, listed, shapes};
use crate::AppState;
use crate::auth::Caller;
use crate::service::Sandbox;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ListQuery {
    metadata: Option<String>,
    state: Option<String>,
    order: Option<String>,
    started_after: Option<String>,
    template: Option<String>,
    next_token: Option<String>,
    limit: Option<String>,
}

/// The running sandboxes of the caller that pass the query's filters, in order.
fn filtered(st: &AppState, caller: &Caller, q: &ListQuery) -> Result<Vec<Arc<Sandbox>>, E2bError> {
    let meta = match q.metadata.as_deref() {
        None | Some("") => Vec::new(),
        Some(m) => parse_metadata_filter(m)?,
    };
    if let Some(states) = q.state.as_deref() {
        let mut any_running = false;
        for s in states.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match s {
                "running" => any_running = true,
                "paused" => {}
                other => {
                    let other: String = other.chars().take(32).collect();
                    return Err(bad(format!("state {other:?}: expected running or paused")));
                }
            }
        }
        if !any_running && !states.trim().is_empty() {
            // Stockade has no paused sandboxes.
            return Ok(Vec::new());
        }
    }
    let after = match q.started_after.as_deref() {
        None | Some("") => None,
        Some(s) => Some(
            parse_time(s)
                .ok_or_else(|| bad(format!("startedAfter {s:?}: not an RFC 3339 time")))?,
        ),
    };
    let mut v: Vec<Arc<Sandbox>> = st
        .svc
        .list(caller)
        .into_iter()
        .filter(|sb| sb.session.is_alive())
        .filter(|sb| meta.iter().all(|(k, val)| sb.metadata.get(k) == Some(val)))
        .filter(|sb| {
            q.template
                .as_deref()
                .is_none_or(|t| t.is_empty() || sb.template == t)
        })
        .filter(|sb| after.is_none_or(|a| sb.created_at >= a))
        .collect();
    match q.order.as_deref() {
        None | Some("") | Some("asc") => {}
        Some("desc") => v.reverse(),
        Some(o) => {
            let o: String = o.chars().take(16).collect();
            return Err(bad(format!("order {o:?}: expected asc or desc")));
        }
    }
    Ok(v)
}

/// `metadata=k1%3Dv1%26k2%3Dv2` (the SDK URL-encodes the pairs, each key and value quoted).
fn parse_metadata_filter(m: &str) -> Result<Vec<(String, String)>, E2bError> {
    let mut out = Vec::new();
    for pair in m.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(&percent_decode(k)?)?;
        let v = percent_decode(&percent_decode(v)?)?;
        out.push((k, v));
        if out.len() > 64 {
            return Err(bad("metadata filter: at most 64 pairs"));
        }
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Result<String, E2bError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| bad("metadata filter: bad percent-encoding"))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| bad("metadata filter: not UTF-8"))
}

/// RFC 3339 with an offset or `Z` (what Python's `isoformat()` writes).
fn parse_time(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    // Everything below slices by byte: only ASCII is a time.
    if s.len() < 19 || s.len() > 64 || !s.is_ascii() {
        return None;
    }
    let (base, rest) = s.split_at(19);
    let num = |r: std::ops::Range<usize>| base.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, se) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !matches!(&base[10..11], "T" | "t" | " ")
        || !(1..=12).contains(&mo)
        || !(1..=31).contains(&d)
    {
        return None;
    }
    let (frac, tz) = match rest.strip_prefix('.') {
        Some(r) => {
            let n = r.bytes().take_while(u8::is_ascii_digit).count();
            (&r[..n], &r[n..])
        }
        None => ("", rest),
    };
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        let f: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
        f.parse().ok()?
    };
    let offset: i64 = match tz {
        "Z" | "z" | "" => 0,
        t if t.len() == 6 && matches!(&t[..1], "+" | "-") && &t[3..4] == ":" => {
            let oh: i64 = t[1..3].parse().ok()?;
            let om: i64 = t[4..6].parse().ok()?;
            let o = oh * 3600 + om * 60;
            if &t[..1] == "-" { -o } else { o }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se - offset;
    let secs = u64::try_from(secs).ok()?;
    std::time::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// A page cursor: the position of the last sandbox shown.
fn cursor(sb: &Sandbox) -> String {
    let ns = sb
        .created_at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{ns}.{}", sb.id)
}

pub(super) async fn list_v2(
    State(st): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, E2bError> {
    let caller = st.svc.authenticate(&headers)?;
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let limit: usize = match q.limit.as_deref() {
        None | Some("") => 100,
        Some(l) => match l.parse::<usize>() {
            Ok(n @ 1..=1000) => n,
            _ => return Err(bad("limit: a whole number from 1 to 1000")),
        },
    };
    let all = filtered(&st, &caller, &q)?;
    let start = match q.next_token.as_deref() {
        None | Some("") => 0,
        Some(tok) => match all.iter().position(|sb| cursor(sb) == tok) {
            Some(i) => i + 1,
            None => {
                // The sandbox the cursor named has ended: resume after its position.
                let Some((ns, id)) = tok.split_once('.') else {
                    return Err(bad("nextToken: not a token this server gave"));
                };
                let ns: u128 = ns
                    .parse()
                    .map_err(|_| bad("nextToken: not a token this server gave"))?;
                let desc = q.order.as_deref() == Some("desc");
                all.iter()
                    .position(|sb| {
                        let k = (
                            sb.created_at
                                .duration_since(std::time::UNIX_EPOCH)
                                .unwrap_or_default()
                                .as_nanos(),
                            sb.id.as_str(),
                        );
                        if desc { k < (ns, id) } else { k > (ns, id) }
                    })
                    .unwrap_or(all.len())
            }
        },
    };
    let page: Vec<&Arc<Sandbox>> = all.iter().skip(start).take(limit).collect();
    let more = start + page.len() < all.len();
    let mut sh = shapes(&st);
    let body: Vec<serde_json::Value> = page
        .iter()
        .map(|sb| serde_json::Value::Object(listed(sb, sh.get(&sb.template))))
        .collect();
    let mut resp = Json(body).into_response();
    if more
        && let Some(last) = page.last()
        && let Ok(v) = HeaderValue::from_str(&cursor(last))
    {
        resp.headers_mut().insert("x-next-token", v);
    }
    Ok(resp)
}

pub(super) async fn list_v1(
    State(st): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, E2bError> {
    let caller = st.svc.authenticate(&headers)?;
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let all = filtered(&st, &caller, &q)?;
    let mut sh = shapes(&st);
    let body: Vec<serde_json::Value> = all
        .iter()
        .map(|sb| serde_json::Value::Object(listed(sb, sh.get(&sb.template))))
        .collect();
    Ok(Json(body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Query strings and times from a client never panic the parsers.
    #[test]
    fn random_filters_and_times_never_panic() {
        let mut x: u64 = 0xdead_beef_1234_5678;
        let pieces = [
            "%",
            "%2",
            "%25",
            "=",
            "&",
            "a",
            "+",
            "\u{e9}",
            "T",
            "Z",
            "+02:00",
            "2024-01-01T00:00:00",
            ".",
            "9",
        ];
        for _ in 0..5000 {
            let mut s = String::new();
            for _ in 0..(x % 10) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                s.push_str(pieces[(x % pieces.len() as u64) as usize]);
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let _ = parse_metadata_filter(&s);
            let _ = parse_time(&s);
        }
    }

    #[test]
    fn metadata_filter_and_times() {
        // What the SDK sends for {"user id": "a&b"} after the query layer decoded it once.
        let m = parse_metadata_filter("user%2520id=a%2526b&k=v").unwrap();
        assert_eq!(
            m,
            vec![
                ("user id".to_string(), "a&b".to_string()),
                ("k".into(), "v".into())
            ]
        );
        let t = parse_time("2024-01-01T02:00:00.5+02:00").unwrap();
        assert_eq!(
            t.duration_since(std::time::UNIX_EPOCH).unwrap(),
            Duration::new(1_704_067_200, 500_000_000)
        );
        assert_eq!(
            parse_time("2024-03-01T00:00:00Z")
                .unwrap()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            1_709_251_200
        );
        assert!(parse_time("yesterday").is_none());
    }
}
