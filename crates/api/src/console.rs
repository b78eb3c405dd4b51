//! The web console: three static files compiled into the binary and served without a key.
//! The page asks for an API key, keeps it in the tab's session storage and calls the
//! public REST API with it, so it shows exactly what that key may see.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpResponse};

use crate::error::ApiError;

/// Scripts, styles and API calls only from this origin; no inline script or style, no
/// framing, no plugins.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; \
    base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// `(file name, content type, bytes)` of every console file.
const FILES: [(&str, &str, &str); 3] = [
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../console/index.html"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_str!("../console/console.css"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_str!("../console/console.js"),
    ),
];

fn file(name: &str) -> Option<(&'static str, &'static str)> {
    FILES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, ctype, body)| (*ctype, *body))
}

fn respond(ctype: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, HeaderValue::from_static(ctype)))
        // The files change with the binary; always revalidate rather than serve a stale page.
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .insert_header((
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .insert_header((
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .insert_header((header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
        .body(body)
}

/// `GET /`: to the console.
#[utoipa::path(
    get,
    path = "/",
    tag = "console",
    operation_id = "getRoot",
    responses(
        (status = 308, description = "Redirects to `/console/`", headers(("Location" = String, description = "`/console/`"))),
        (status = 200, description = "The console page, as a client that follows the redirect ends up with", content_type = "text/html", body = String),
    )
)]
pub async fn root() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, "/console/"))
        .finish()
}

/// `GET /console/`: the console page.
#[utoipa::path(
    get,
    path = "/console/",
    tag = "console",
    operation_id = "getConsole",
    responses((status = 200, description = "The console page", content_type = "text/html", body = String))
)]
pub async fn index() -> Result<HttpResponse, ApiError> {
    asset_named("index.html")
}

/// `GET /console/{file}`: one of the console's files.
#[utoipa::path(
    get,
    path = "/console/{file}",
    tag = "console",
    operation_id = "getConsoleFile",
    params(("file" = String, Path, description = "`index.html`, `console.css` or `console.js`")),
    responses(
        (status = 200, description = "The file", content(
            (String = "text/html"),
            (String = "text/css"),
            (String = "text/javascript"),
        )),
        (status = 404, response = crate::openapi::NotFound),
    )
)]
pub async fn asset(name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    asset_named(&name)
}

/// The console's icon, an SVG drawn for it.
const FAVICON: &[u8] = include_bytes!("../console/favicon.svg");

/// `GET /favicon.ico`: the console's icon (an SVG, whatever the name says).
#[utoipa::path(
    get,
    path = "/favicon.ico",
    tag = "console",
    operation_id = "getFavicon",
    responses((status = 200, description = "The icon", content_type = "image/svg+xml", body = String))
)]
pub async fn favicon() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("image/svg+xml"),
        ))
        .insert_header((
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=86400"),
        ))
        .insert_header((
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .body(FAVICON)
}

fn asset_named(name: &str) -> Result<HttpResponse, ApiError> {
    file(name)
        .map(|(ctype, body)| respond(ctype, body))
        .ok_or_else(|| ApiError::not_found("NOT_FOUND", "file"))
}

/// `/`, `/favicon.ico`, `/console/` and `/console/{file}`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(root))
        .route("/favicon.ico", web::get().to(favicon))
        .route("/console/", web::get().to(index))
        .route("/console/{file}", web::get().to(asset));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_found_and_nothing_else() {
        for (name, ctype, body) in FILES {
            assert_eq!(file(name), Some((ctype, body)));
            assert!(!body.is_empty(), "{name}");
        }
        for bad in [
            "",
            "../Cargo.toml",
            "index.htm",
            "console.js/",
            "CONSOLE.JS",
        ] {
            assert_eq!(file(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_favicon_is_a_small_svg_that_loads_nothing() {
        let svg = std::str::from_utf8(FAVICON).unwrap_or("");
        assert!(svg.starts_with("<svg "), "an SVG document");
        assert!(FAVICON.len() < 2048);
        // The namespace is the only URL; nothing is fetched.
        assert_eq!(svg.matches("http").count(), 1);
        for needle in ["<script", "href", "<image", "url("] {
            assert!(!svg.contains(needle), "{needle}");
        }
    }

    #[test]
    fn the_page_loads_nothing_from_other_hosts_and_has_no_inline_script() {
        for (name, _, body) in FILES {
            // The SVG namespace names the charts' element type; nothing is fetched from it.
            let body = body.replace("\"http://www.w3.org/2000/svg\"", "");
            for needle in ["http://", "https://", "//cdn", "innerHTML", "eval("] {
                assert!(!body.contains(needle), "{name} contains {needle}");
            }
        }
        let (_, html) = file("index.html").unwrap_or(("", ""));
        assert_eq!(html.matches("<script").count(), 1, "one script tag");
        assert!(html.contains(r#"<script src="console.js" defer></script>"#));
        assert!(!html.contains("style="), "no inline styles");
        for handler in [
            " onclick=",
            " onload=",
            " onsubmit=",
            " onerror=",
            " onchange=",
        ] {
            assert!(
                !html.contains(handler),
                "no inline event handlers: {handler}"
            );
        }
    }
}
