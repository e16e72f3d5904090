//! The live web dashboard at `/`: a page and its scripts and styles, built into the binary
//! (`include_bytes!`), so it works offline and always matches the API it reads.
//!
//! The files hold no data: every number on the page comes from the API (`/v1/...`, `/readyz`)
//! called by the page's scripts with the caller's API key, so these routes need no key. They
//! are not part of the v1 API either, and not in the OpenAPI document: [`routes`] is a table
//! of its own, merged into the router beside [`super::routes`].
//!
//! Every answer carries a Content-Security-Policy that allows scripts, styles and requests of
//! this origin only (no inline script, no eval, no other host), `nosniff`, and an ETag: the
//! browser revalidates each file and gets a 304 while the binary is the same.

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{Route, route};
use crate::http::error::ApiError;

/// A file of the dashboard.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    /// A strong validator: a hash of `body`, computed at compile time.
    etag: &'static str,
}

macro_rules! asset {
    ($name:literal, $content_type:literal) => {{
        const BODY: &[u8] = include_bytes!(concat!("../dashboard/", $name));
        const HASH: [u8; 18] = etag_of(BODY);
        Asset {
            name: $name,
            content_type: $content_type,
            body: BODY,
            etag: match std::str::from_utf8(&HASH) {
                Ok(text) => text,
                Err(_) => panic!("an ETag is ASCII"),
            },
        }
    }};
}

/// The dashboard's files, served under `/dashboard/<name>` (`index.html` at `/` too).
const ASSETS: [Asset; 6] = [
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("api.js", "text/javascript; charset=utf-8"),
    asset!("charts.js", "text/javascript; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
];

/// `"<16 hex digits>"`: FNV-1a (64 bits) of `body`, quoted as an ETag is.
const fn etag_of(body: &[u8]) -> [u8; 18] {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < body.len() {
        hash ^= body[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'"'; 18];
    let mut d = 0;
    while d < 16 {
        out[1 + d] = HEX[((hash >> (60 - 4 * d)) & 0xf) as usize];
        d += 1;
    }
    out
}

/// Scripts, styles, images and requests of this origin only; no inline script or style, no
/// frames, no forms posted anywhere (the page's forms are handled by its scripts).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
     manifest-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The dashboard's routes (no API key needed: the files hold no data).
pub fn routes() -> Vec<Route> {
    vec![route(Method::GET, "/", index), route(Method::GET, "/dashboard/{file}", file)]
}

async fn index(headers: HeaderMap) -> Response {
    serve(&ASSETS[0], &headers)
}

async fn file(Path(name): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    let asset = ASSETS.iter().find(|a| a.name == name).ok_or_else(|| ApiError::not_found("no_route", format!("no dashboard file `{name}`")))?;
    Ok(serve(asset, &headers))
}

/// The file, or 304 when the browser's copy (`If-None-Match`) is this one.
fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let fresh = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == asset.etag || tag == "*");
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type)),
        (header::ETAG, HeaderValue::from_static(asset.etag)),
        // Revalidated on every load (a 304 is a few bytes), so a new binary's page is never
        // mixed with an old binary's scripts.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ];
    if fresh { (StatusCode::NOT_MODIFIED, headers).into_response() } else { (headers, asset.body).into_response() }
}

/// The dashboard's total size in bytes (what a first visit downloads, uncompressed).
pub fn total_bytes() -> usize {
    ASSETS.iter().map(|a| a.body.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The budget for the page and everything it loads.
    const MAX_BYTES: usize = 200 * 1024;

    #[test]
    fn the_dashboard_is_small_and_every_file_has_its_own_etag() {
        assert!(total_bytes() < MAX_BYTES, "the dashboard is {} bytes, over {MAX_BYTES}", total_bytes());
        let mut tags: Vec<&str> = ASSETS.iter().map(|a| a.etag).collect();
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), ASSETS.len());
        assert!(ASSETS.iter().all(|a| a.etag.len() == 18 && a.etag.starts_with('"') && a.etag.ends_with('"')));
    }

    /// The CSP forbids inline script: every script must be a file of this table, loaded by
    /// `src`, and no element may carry an event handler attribute or inline style.
    #[test]
    fn the_page_has_no_inline_script_or_style_and_loads_only_its_own_files() {
        let html = std::str::from_utf8(ASSETS[0].body).expect("index.html is UTF-8");
        for inline in ["<script>", "<style", " onclick=", " onload=", " style=", "javascript:", "http://", "https://"] {
            assert!(!html.contains(inline), "index.html contains `{inline}`");
        }
        for script in html.split("<script").skip(1) {
            let src = script.split("src=\"").nth(1).and_then(|s| s.split('"').next()).expect("a script with src");
            let name = src.strip_prefix("/dashboard/").expect("a dashboard file");
            assert!(ASSETS.iter().any(|a| a.name == name), "index.html loads `{src}`, not a dashboard file");
        }
        for asset in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            let text = std::str::from_utf8(asset.body).expect("UTF-8");
            // Text from the API is set with textContent; innerHTML would parse it as markup.
            for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"] {
                assert!(!text.contains(sink), "{} uses `{sink}`", asset.name);
            }
            for import in text.lines().filter_map(|l| l.strip_prefix("import ")) {
                let from = import.split('"').nth(1).expect("an import from a quoted path");
                let name = from.strip_prefix("./").expect("a relative import");
                assert!(ASSETS.iter().any(|a| a.name == name), "{} imports `{from}`, not a dashboard file", asset.name);
            }
        }
    }

    #[test]
    fn an_etag_the_browser_has_answers_304() {
        let asset = &ASSETS[1];
        let mut request = HeaderMap::new();
        request.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"0000000000000000\", W/\"x\""));
        assert_eq!(serve(asset, &request).status(), StatusCode::OK);
        request.insert(header::IF_NONE_MATCH, HeaderValue::from_static(asset.etag));
        let response = serve(asset, &request);
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(response.headers().get(header::ETAG).and_then(|v| v.to_str().ok()), Some(asset.etag));
        assert!(response.headers().get(header::CONTENT_SECURITY_POLICY).is_some());
    }
}
