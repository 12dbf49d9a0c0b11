//! The content codings the package store keeps each body in (`Accept-Encoding` is
//! negotiated into one of them by [`negotiate_encoding`](crate::http::headers::negotiate_encoding)).

/// A content coding the package route can serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    Identity,
    Gzip,
    Brotli,
}

impl Encoding {
    /// The `Content-Encoding` token (and metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Gzip => "gzip",
            Encoding::Brotli => "br",
        }
    }
}
