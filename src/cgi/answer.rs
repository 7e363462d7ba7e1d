//! The short text answers brood makes itself (4xx, 5xx): one sentence saying what happened.

use hyper::StatusCode;

/// One sentence for the client on what an error status means here.
pub(crate) fn explain(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "The request was malformed.",
        401 => "This server needs a valid user and password.",
        403 => "This path may not be run.",
        404 => "No script at this path.",
        408 => "The request body stopped coming.",
        413 => "The request body is larger than this server takes.",
        431 => "The request headers are larger than this server takes.",
        500 => "The script could not be started.",
        502 => "The script did not give a valid CGI answer.",
        503 => "Too many scripts are running; try again later.",
        504 => "The script took too long.",
        _ => "",
    }
}

/// The body of an answer brood makes itself.
pub(crate) fn text(status: StatusCode) -> String {
    text_saying(status, explain(status))
}

/// The body of an answer brood makes itself, with its own sentence.
pub(crate) fn text_saying(status: StatusCode, sentence: &str) -> String {
    format!(
        "{} {}\n{sentence}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
    )
}
