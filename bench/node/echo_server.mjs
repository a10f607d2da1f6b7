// Node's own socket.io server answering as the project's sys:ping does (the client's t and the server's
// clock, in the uniform ack): the baseline of bench/events.py.
import { createServer } from "node:http";
import { Server } from "socket.io";

const port = Number(process.argv[2]);
const httpServer = createServer();
const io = new Server(httpServer, { transports: ["websocket", "polling"] });
io.on("connection", (socket) => {
  socket.on("echo", (data, ack) => ack({ ok: true, data: { t: data?.t ?? null, server_time_ms: Date.now() } }));
});
httpServer.listen(port, "127.0.0.1", () => console.log(`listening ${port}`));
