//! The page and its libraries, embedded in the binary so the UI works offline and always matches the daemon.
//! `assets/vendor/` holds the npm packages' built files (see `assets/vendor/refresh.sh`).

/// (content type, bytes) for a request path.
pub fn get(path: &str) -> Option<(&'static str, &'static [u8])> {
    const JS: &str = "text/javascript; charset=utf-8";
    Some(match path {
        "/" | "/index.html" => (
            "text/html; charset=utf-8",
            include_bytes!("assets/index.html"),
        ),
        "/app.js" => (JS, include_bytes!("assets/app.js")),
        "/app.css" => ("text/css; charset=utf-8", include_bytes!("assets/app.css")),
        "/vendor/cytoscape.min.js" => (JS, include_bytes!("assets/vendor/cytoscape.min.js")),
        "/vendor/layout-base.js" => (JS, include_bytes!("assets/vendor/layout-base.js")),
        "/vendor/cose-base.js" => (JS, include_bytes!("assets/vendor/cose-base.js")),
        "/vendor/cytoscape-fcose.js" => (JS, include_bytes!("assets/vendor/cytoscape-fcose.js")),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn page_loads_only_embedded_scripts() {
        let (_, html) = super::get("/").unwrap();
        let html = std::str::from_utf8(html).unwrap();
        for src in html.split("src=\"").skip(1) {
            let path = &src[..src.find('"').unwrap()];
            assert!(super::get(path).is_some(), "{path} is not embedded");
        }
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "no network fetches"
        );
    }
}
