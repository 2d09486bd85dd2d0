//! Plain listeners with `redirect_https`: every request gets a 308 to the same URL over HTTPS.

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};

use super::{single_host, ProxyBody, ProxyError};

/// `308 Permanent Redirect` (RFC 9110 section 15.4.9): unlike 301, clients keep the method and body.
pub(super) fn to_https<B>(request: &Request<B>, port: u16) -> Result<Response<ProxyBody>, ProxyError> {
    let host = single_host(request)?.ok_or(ProxyError::BadRequest("a Host header is needed to redirect to HTTPS"))?;
    let host = host.to_str().map_err(|_| ProxyError::BadRequest("the Host header is not valid text"))?;
    let host = without_port(host);
    // Origin-form only: `*` (OPTIONS) names no resource to redirect to.
    let target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
    if !target.starts_with('/') {
        return Err(ProxyError::BadRequest("the request target must be an absolute path"));
    }
    let location = match port {
        443 => format!("https://{host}{target}"),
        port => format!("https://{host}:{port}{target}"),
    };
    let location =
        HeaderValue::from_str(&location).map_err(|_| ProxyError::BadRequest("cannot build the HTTPS URL"))?;
    let mut response = Response::new(ProxyBody::empty());
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    response.headers_mut().insert(header::LOCATION, location);
    Ok(response)
}

/// `example.com:8080` -> `example.com`, `[::1]:8080` -> `[::1]`.
fn without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(host: &str, uri: &str, port: u16) -> String {
        let request = Request::builder().uri(uri).header(header::HOST, host).body(()).unwrap();
        let response = to_https(&request, port).unwrap();
        assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
        response.headers()[header::LOCATION].to_str().unwrap().to_owned()
    }

    #[test]
    fn to_https_keeps_host_path_and_query_and_swaps_the_port() {
        assert_eq!(location("shop.test:8080", "/a/b?x=1", 8443), "https://shop.test:8443/a/b?x=1");
        assert_eq!(location("shop.test", "/", 443), "https://shop.test/");
        assert_eq!(location("[::1]:8080", "/x", 8443), "https://[::1]:8443/x");
    }

    #[test]
    fn to_https_refuses_what_would_make_another_url() {
        let refused = |request: Request<()>| matches!(to_https(&request, 443), Err(ProxyError::BadRequest(_)));
        let with_host = |uri: &str, host: &str| Request::builder().uri(uri).header(header::HOST, host);
        assert!(refused(with_host("/a", "evil.test/x?").body(()).unwrap()), "a Host with a path");
        assert!(refused(with_host("/a", "user@shop.test").body(()).unwrap()), "a Host with userinfo");
        assert!(refused(with_host("*", "shop.test").body(()).unwrap()), "OPTIONS *");
        let two = with_host("/a", "shop.test").header(header::HOST, "evil.test").body(()).unwrap();
        assert!(refused(two), "two Hosts");
    }

    #[test]
    fn to_https_without_host_is_bad_request() {
        let request = Request::builder().uri("/x").body(()).unwrap();
        assert!(matches!(to_https(&request, 443), Err(ProxyError::BadRequest(_))));
    }
}
