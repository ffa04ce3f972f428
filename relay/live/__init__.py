"""Live pages: the hub, the WebSocket wire, /ws, Socket.IO and the polling fallback."""
