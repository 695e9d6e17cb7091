//! Fake PagerDuty (REST API v2) and Opsgenie (Schedule API) servers that speak the real
//! request and response shapes, check what jitgate sends (credential headers, filters,
//! time windows, paging) and record every request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

pub const PD_TOKEN: &str = "pd-test-token+NEVER-LOG-ME";
pub const PD_ACCEPT: &str = "application/vnd.pagerduty+json;version=2";
pub const OG_KEY: &str = "og-test-key-NEVER-LOG-ME";

/// How a fake answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// HTTP 500.
    ServerError,
    /// Accepts the request and never answers.
    Hang,
    /// HTTP 200 with a body that is not JSON.
    Malformed,
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub query: Vec<(String, String)>,
    pub authorization: Option<String>,
    pub accept: Option<String>,
    /// What the fake answered.
    pub status: u16,
}

impl Seen {
    /// Every value of query parameter `key`.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.query
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }
    /// The single value of query parameter `key`.
    pub fn one(&self, key: &str) -> Option<&str> {
        self.all(key).first().copied()
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(String::from)
}

fn parse_query(raw: Option<String>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Answers according to `mode`, or `None` to go on with a normal answer.
async fn scripted(mode: Mode) -> Option<Response> {
    match mode {
        Mode::Normal => None,
        Mode::ServerError => Some((StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()),
        Mode::Malformed => Some(
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                "{\"oncalls\": [ this is not json",
            )
                .into_response(),
        ),
        Mode::Hang => {
            std::future::pending::<()>().await;
            None
        }
    }
}

// ---- PagerDuty -----------------------------------------------------------------------

#[derive(Default)]
struct PdInner {
    oncalls: Vec<Value>,
    incidents: Vec<Value>,
    users: Vec<Value>,
    mode: Option<Mode>,
    seen: Vec<Seen>,
}

/// A fake of PagerDuty's `/oncalls`, `/incidents` and `/users`.
#[derive(Clone)]
pub struct FakePagerDuty {
    pub addr: SocketAddr,
    inner: Arc<Mutex<PdInner>>,
}

type Pd = Arc<Mutex<PdInner>>;

impl FakePagerDuty {
    pub async fn start() -> Self {
        let inner: Pd = Arc::default();
        let app = Router::new()
            .route("/oncalls", get(pd_oncalls))
            .route("/incidents", get(pd_incidents))
            .route("/users", get(pd_users))
            .with_state(inner.clone());
        Self {
            addr: serve(app).await,
            inner,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.inner.lock().unwrap().mode = Some(mode);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.inner.lock().unwrap().seen.clone()
    }

    pub fn seen_at(&self, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path == path).collect()
    }

    /// Someone on call in `schedule` at `level` of escalation policy `ep` during
    /// `[start, end)` (`None`: open-ended).
    #[allow(clippy::too_many_arguments)]
    pub fn add_oncall(
        &self,
        user_id: &str,
        email: &str,
        schedule: (&str, &str),
        ep: (&str, &str),
        level: u32,
        start: Option<DateTime<Utc>>,
        end: Option<DateTime<Utc>>,
    ) {
        let name = email.split('@').next().unwrap_or(email);
        let entry = json!({
            "escalation_policy": {"id": ep.0, "type": "escalation_policy_reference", "summary": ep.1,
                                  "self": format!("https://api.pagerduty.com/escalation_policies/{}", ep.0),
                                  "html_url": format!("https://acme.pagerduty.com/escalation_policies/{}", ep.0)},
            "escalation_level": level,
            "schedule": {"id": schedule.0, "type": "schedule_reference", "summary": schedule.1,
                         "self": format!("https://api.pagerduty.com/schedules/{}", schedule.0),
                         "html_url": format!("https://acme.pagerduty.com/schedules/{}", schedule.0)},
            "user": {"id": user_id, "type": "user", "name": name, "summary": name, "email": email,
                     "time_zone": "Europe/Berlin", "role": "user",
                     "self": format!("https://api.pagerduty.com/users/{user_id}"),
                     "html_url": format!("https://acme.pagerduty.com/users/{user_id}")},
            "start": start.map(rfc3339),
            "end": end.map(rfc3339),
        });
        let mut g = self.inner.lock().unwrap();
        g.oncalls.push(entry);
        if !g.users.iter().any(|u| u["id"] == user_id) {
            g.users
                .push(json!({"id": user_id, "type": "user", "name": name, "email": email}));
        }
    }

    /// An incident with `status`, assigned to `assignee`.
    pub fn add_incident(&self, id: &str, number: u64, title: &str, status: &str, assignee: &str) {
        self.inner.lock().unwrap().incidents.push(json!({
            "id": id, "type": "incident", "summary": format!("[#{number}] {title}"),
            "incident_number": number, "title": title, "status": status,
            "urgency": "high",
            "html_url": format!("https://acme.pagerduty.com/incidents/{id}"),
            "created_at": "2025-01-01T00:00:00Z",
            "assignments": [{"at": "2025-01-01T00:00:00Z",
                             "assignee": {"id": assignee, "type": "user_reference", "summary": "someone"}}]
        }));
    }

    /// A user known only to `/users` (not on call anywhere).
    pub fn add_user(&self, id: &str, email: &str) {
        self.inner
            .lock()
            .unwrap()
            .users
            .push(json!({"id": id, "type": "user", "name": id, "email": email}));
    }
}

fn pd_error(status: StatusCode, message: &str, errors: &[&str]) -> Response {
    (
        status,
        Json(json!({"error": {"message": message, "code": 2001, "errors": errors}})),
    )
        .into_response()
}

/// Records the request, then checks the credential headers and the scripted mode.
async fn pd_gate(inner: &Pd, path: &str, headers: &HeaderMap, query: &[(String, String)]) -> Option<Response> {
    let authorization = header(headers, "authorization");
    let accept = header(headers, "accept");
    let (mode, status) = {
        let g = inner.lock().unwrap();
        let mode = g.mode.unwrap_or(Mode::Normal);
        let status = if authorization.as_deref() != Some(&format!("Token token={PD_TOKEN}")) {
            401
        } else if accept.as_deref() != Some(PD_ACCEPT) {
            406
        } else {
            match mode {
                Mode::ServerError => 500,
                _ => 200,
            }
        };
        (mode, status)
    };
    inner.lock().unwrap().seen.push(Seen {
        path: path.into(),
        query: query.to_vec(),
        authorization: authorization.clone(),
        accept: accept.clone(),
        status,
    });
    match status {
        401 => return Some(pd_error(StatusCode::UNAUTHORIZED, "Unauthorized", &[])),
        406 => return Some(pd_error(StatusCode::NOT_ACCEPTABLE, "Not Acceptable", &[])),
        _ => {}
    }
    scripted(mode).await
}

fn find<'a>(query: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    query
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// `limit` and `offset`, or why they are refused.
fn page_params(query: &[(String, String)]) -> Result<(usize, usize), String> {
    let limit = find(query, "limit")
        .first()
        .map(|l| l.parse::<usize>())
        .unwrap_or(Ok(25));
    let offset = find(query, "offset")
        .first()
        .map(|o| o.parse::<usize>())
        .unwrap_or(Ok(0));
    match (limit, offset) {
        (Ok(l), Ok(o)) if (1..=100).contains(&l) => Ok((l, o)),
        _ => Err("limit must be 1 to 100 and offset a number".into()),
    }
}

fn invalid(why: &str) -> Response {
    pd_error(StatusCode::BAD_REQUEST, "Invalid Input Provided", &[why])
}

/// An ISO 8601 date parameter, or why it is refused.
fn time_param(query: &[(String, String)], key: &str) -> Result<Option<DateTime<Utc>>, String> {
    match find(query, key).first() {
        None => Ok(None),
        Some(v) => DateTime::parse_from_rfc3339(v)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| format!("{key} is not a date")),
    }
}

async fn pd_oncalls(State(inner): State<Pd>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let query = parse_query(raw);
    if let Some(r) = pd_gate(&inner, "/oncalls", &headers, &query).await {
        return r;
    }
    let (limit, offset) = match page_params(&query) {
        Ok(p) => p,
        Err(why) => return invalid(&why),
    };
    let (since, until) = match (time_param(&query, "since"), time_param(&query, "until")) {
        (Ok(Some(s)), Ok(Some(u))) => (s, u),
        // jitgate must always say which moment it asks about.
        _ => {
            return pd_error(
                StatusCode::BAD_REQUEST,
                "Invalid Input Provided",
                &["since and until are required dates"],
            )
        }
    };
    if until < since || until - since > chrono::Duration::days(90) {
        return pd_error(StatusCode::BAD_REQUEST, "Invalid Input Provided", &["bad time window"]);
    }
    let schedules = find(&query, "schedule_ids[]");
    let policies = find(&query, "escalation_policy_ids[]");
    let with_users = find(&query, "include[]").contains(&"users");
    let all: Vec<Value> = inner
        .lock()
        .unwrap()
        .oncalls
        .iter()
        .filter(|o| schedules.is_empty() || schedules.iter().any(|s| o["schedule"]["id"] == *s))
        .filter(|o| policies.is_empty() || policies.iter().any(|p| o["escalation_policy"]["id"] == *p))
        .filter(|o| {
            let starts_before = o["start"]
                .as_str()
                .is_none_or(|s| DateTime::parse_from_rfc3339(s).unwrap() <= until);
            let ends_after = o["end"]
                .as_str()
                .is_none_or(|e| DateTime::parse_from_rfc3339(e).unwrap() >= since);
            starts_before && ends_after
        })
        .cloned()
        .map(|mut o| {
            if !with_users {
                // Without include[]=users PagerDuty sends a reference: no e-mail.
                let u = o["user"].clone();
                o["user"] = json!({"id": u["id"], "type": "user_reference", "summary": u["summary"]});
            }
            o
        })
        .collect();
    let page: Vec<Value> = all.iter().skip(offset).take(limit).cloned().collect();
    let more = offset + page.len() < all.len();
    Json(json!({"oncalls": page, "limit": limit, "offset": offset, "more": more, "total": null})).into_response()
}

async fn pd_incidents(State(inner): State<Pd>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let query = parse_query(raw);
    if let Some(r) = pd_gate(&inner, "/incidents", &headers, &query).await {
        return r;
    }
    let (limit, offset) = match page_params(&query) {
        Ok(p) => p,
        Err(why) => return invalid(&why),
    };
    let statuses = find(&query, "statuses[]");
    let users = find(&query, "user_ids[]");
    let found: Vec<Value> = inner
        .lock()
        .unwrap()
        .incidents
        .iter()
        .filter(|i| statuses.is_empty() || statuses.iter().any(|s| i["status"] == *s))
        .filter(|i| {
            users.is_empty()
                || i["assignments"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|a| users.iter().any(|u| a["assignee"]["id"] == *u)))
        })
        .cloned()
        .collect();
    let page: Vec<Value> = found.iter().skip(offset).take(limit).cloned().collect();
    let more = offset + page.len() < found.len();
    Json(json!({"incidents": page, "limit": limit, "offset": offset, "more": more, "total": null})).into_response()
}

async fn pd_users(State(inner): State<Pd>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let query = parse_query(raw);
    if let Some(r) = pd_gate(&inner, "/users", &headers, &query).await {
        return r;
    }
    let q = find(&query, "query")
        .first()
        .map(|q| q.to_lowercase())
        .unwrap_or_default();
    let found: Vec<Value> = inner
        .lock()
        .unwrap()
        .users
        .iter()
        .filter(|u| {
            u["email"].as_str().is_some_and(|e| e.to_lowercase().contains(&q))
                || u["name"].as_str().is_some_and(|n| n.to_lowercase().contains(&q))
        })
        .cloned()
        .collect();
    Json(json!({"users": found, "limit": 25, "offset": 0, "more": false, "total": null})).into_response()
}

// ---- Opsgenie ------------------------------------------------------------------------

#[derive(Default)]
struct OgInner {
    /// Schedule ID → (name, usernames on call).
    schedules: HashMap<String, (String, Vec<String>)>,
    mode: Option<Mode>,
    seen: Vec<Seen>,
}

/// A fake of Opsgenie's `GET /v2/schedules/{id}/on-calls`.
#[derive(Clone)]
pub struct FakeOpsgenie {
    pub addr: SocketAddr,
    inner: Arc<Mutex<OgInner>>,
}

type Og = Arc<Mutex<OgInner>>;

impl FakeOpsgenie {
    pub async fn start() -> Self {
        let inner: Og = Arc::default();
        let app = Router::new()
            .route("/v2/schedules/{id}/on-calls", get(og_on_calls))
            .with_state(inner.clone());
        Self {
            addr: serve(app).await,
            inner,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.inner.lock().unwrap().mode = Some(mode);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.inner.lock().unwrap().seen.clone()
    }

    /// Who is on call in schedule `id` (called `name`).
    pub fn set_schedule(&self, id: &str, name: &str, on_call: &[&str]) {
        self.inner.lock().unwrap().schedules.insert(
            id.into(),
            (name.into(), on_call.iter().map(|s| s.to_string()).collect()),
        );
    }
}

fn og_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"message": message, "took": 0.001, "requestId": "00000000-0000-0000-0000-000000000000"})),
    )
        .into_response()
}

async fn og_on_calls(
    State(inner): State<Og>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let query = parse_query(raw);
    let authorization = header(&headers, "authorization");
    let mode = inner.lock().unwrap().mode.unwrap_or(Mode::Normal);
    let authorized = authorization.as_deref() == Some(&format!("GenieKey {OG_KEY}"));
    let status = match (authorized, mode) {
        (false, _) => 401,
        (true, Mode::ServerError) => 500,
        _ => 200,
    };
    inner.lock().unwrap().seen.push(Seen {
        // As sent, still percent-encoded.
        path: uri.path().to_string(),
        query: query.clone(),
        authorization,
        accept: header(&headers, "accept"),
        status,
    });
    if !authorized {
        return og_error(StatusCode::UNAUTHORIZED, "Could not authenticate");
    }
    if let Some(r) = scripted(mode).await {
        return r;
    }
    if let Err(why) = time_param(&query, "date") {
        return og_error(StatusCode::UNPROCESSABLE_ENTITY, &why);
    }
    let by_name = find(&query, "scheduleIdentifierType").first() == Some(&"name");
    let g = inner.lock().unwrap();
    let found = if by_name {
        g.schedules
            .iter()
            .find(|(_, (n, _))| *n == id)
            .map(|(k, v)| (k.clone(), v.clone()))
    } else {
        g.schedules.get(&id).map(|v| (id.clone(), v.clone()))
    };
    let Some((sid, (name, on_call))) = found else {
        return og_error(
            StatusCode::NOT_FOUND,
            &format!("No schedule exists with identifier [{id}]"),
        );
    };
    let parent = json!({"id": sid, "name": name, "enabled": true});
    let data = if find(&query, "flat").first() == Some(&"true") {
        json!({"_parent": parent, "onCallRecipients": on_call})
    } else {
        // The nested form: participants as objects, not usernames.
        let participants: Vec<Value> = on_call
            .iter()
            .map(|u| json!({"id": format!("id-{u}"), "name": u, "type": "user"}))
            .collect();
        json!({"_parent": parent, "onCallParticipants": participants})
    };
    Json(json!({"data": data, "took": 0.012, "requestId": "00000000-0000-0000-0000-000000000001"})).into_response()
}
