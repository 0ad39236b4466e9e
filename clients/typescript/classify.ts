// Classifies a photo with Visage's ClassifyService (the TypeScript client generated from
// the protos by protoc-gen-es, over gRPC with Connect's Node transport) and prints each
// face's name, left to right: "<name or unknown>\t<confidence>".
//
//   VISAGE_TOKEN=... node dist/classify.js [--addr 127.0.0.1:50052] PHOTO
// `make clients` copies this file beside the generated code (build/clients/typescript/gen)
// and compiles it with tsc (strict), so the imports below are relative to that folder.
import { readFileSync } from "node:fs";
import { createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { ClassifyService } from "./gen/visage/v1/classify_pb.js";

const args = process.argv.slice(2);
let addr = "127.0.0.1:50052";
const at = args.indexOf("--addr");
if (at >= 0) {
  addr = args[at + 1];
  args.splice(at, 2);
}
if (args.length !== 1) {
  console.error("usage: classify [--addr HOST:PORT] PHOTO");
  process.exit(2);
}

const token = process.env.VISAGE_TOKEN ?? "";
const bearer: Interceptor = (next) => async (request) => {
  if (token) request.header.set("authorization", `Bearer ${token}`);
  return next(request);
};
const transport = createGrpcTransport({ baseUrl: `http://${addr}`, interceptors: [bearer] });
const client = createClient(ClassifyService, transport);

const reply = await client.classify({ content: readFileSync(args[0]), maxCandidates: 1 }, { timeoutMs: 60_000 });
const faces = [...reply.faces].sort((a, b) => (a.box?.left ?? 0) - (b.box?.left ?? 0));
for (const face of faces) {
  console.log(`${face.displayName || "unknown"}\t${face.confidence.toFixed(3)}`);
}
