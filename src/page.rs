//! The browser chat page (PROTOCOL.md section 6): plain HTML and JS in `page/chat.html`,
//! embedded in the binary and served by `GET /` on every WebSocket listener the CLI opens.

use servercore::ws::WsConfig;

/// The page's HTML.
pub const CHAT_HTML: &str = include_str!("page/chat.html");

/// The WebSocket options of the CLI's listeners: the library's defaults plus the page.
pub fn ws_config() -> WsConfig {
    WsConfig::default().page("/", "text/html; charset=utf-8", CHAT_HTML)
}
