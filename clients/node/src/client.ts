/**
 * Node.js client of the okra sidecar's WorkflowHostAPI, with the seed interface's method names
 * (run, signal, getStatus, query, cancel, listWorkflows). JSON in and out: `input`, `output`,
 * `payload` and `variables` are plain JavaScript values, times are ISO 8601 strings.
 *
 * The proto is loaded at run time with @grpc/proto-loader from the repository's protos/
 * folder (or `protoDir`), so there is no generated code to keep in step.
 */
import { randomUUID } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export type WorkflowStatus =
  | "pending"
  | "running"
  | "waiting"
  | "completed"
  | "failed"
  | "cancelled"
  | "suspended";

/**
 * The seed's WorkflowInput, plus the idempotency key `requestId`: a new UUID when omitted, so
 * that `run` can retry a Run answered UNAVAILABLE (which may already be stored) without
 * starting it twice. Pass your own to make your own retries safe as well.
 */
export interface WorkflowInput {
  workflowId: string;
  input: unknown;
  correlationId?: string;
  tags?: Record<string, string>;
  requestId?: string;
}

export interface SignalInput {
  instanceId: string;
  signal: string;
  payload?: unknown;
  signalId?: string;
}

export interface WorkflowError {
  type: string;
  status: number;
  title: string;
  detail: string;
  instance: string;
}

/** The seed's WorkflowInstance, plus `updatedAt`, `cancelReason` and the problem details. */
export interface WorkflowInstance {
  instanceId: string;
  workflowId: string;
  version: string;
  status: WorkflowStatus;
  currentStep?: string;
  startTime: string;
  endTime?: string;
  updatedAt?: string;
  input: Json;
  output?: Json;
  error?: string;
  problem?: WorkflowError;
  variables: Record<string, Json>;
  correlationId?: string;
  tags: Record<string, string>;
  cancelReason?: string;
}

export interface QueryOptions {
  workflowId?: string;
  status?: WorkflowStatus[];
  tags?: Record<string, string>;
  correlationId?: string;
  startedAfter?: string;
  startedBefore?: string;
  limit?: number;
  cursor?: string;
}

export interface QueryResult {
  instances: WorkflowInstance[];
  cursor?: string;
}

export interface WorkflowInfo {
  workflowId: string;
  version: string;
  triggers: string[];
  namespace: string;
  name: string;
  title: string;
  summary: string;
}

/** TLS to a sidecar serving `tlsCertFile`; a client certificate for one requiring it. */
export interface TlsOptions {
  /** PEM CA certificates that signed the sidecar's certificate; the system's roots if omitted. */
  caFile?: string;
  /** PEM client certificate (mutual TLS), with `keyFile`. */
  certFile?: string;
  keyFile?: string;
  /** The name to check the sidecar's certificate against, if not the host dialled. */
  serverName?: string;
}

export interface ClientOptions {
  /** Folder holding okra/workflow/v1/workflow.proto; found above this file when omitted. */
  protoDir?: string;
  /** Deadline of each call in milliseconds (default 10 000), retries of a Run included. */
  timeoutMs?: number;
  /** Dial with TLS; plaintext when neither this nor `credentials` is given. */
  tls?: TlsOptions;
  credentials?: grpc.ChannelCredentials;
}

/** Channel credentials and options for `tls` (read from the files now). */
export function tlsCredentials(tls: TlsOptions): {
  credentials: grpc.ChannelCredentials;
  options: grpc.ChannelOptions;
} {
  if ((tls.certFile === undefined) !== (tls.keyFile === undefined)) {
    throw new Error("a client certificate needs its key: give certFile and keyFile");
  }
  const read = (file?: string): Buffer | null => (file ? fs.readFileSync(file) : null);
  return {
    credentials: grpc.credentials.createSsl(read(tls.caFile), read(tls.keyFile), read(tls.certFile)),
    options: tls.serverName ? { "grpc.ssl_target_name_override": tls.serverName } : {},
  };
}

/** A failed call: the gRPC status code and message, and the BadRequest field paths if any. */
export class OkraError extends Error {
  constructor(
    readonly code: grpc.status,
    readonly details: string,
    readonly fieldViolations: string[],
  ) {
    super(`${grpc.status[code]}: ${details}`);
    this.name = "OkraError";
  }
}

// -- google.protobuf.Value <-> JSON ---------------------------------------------------------

interface PbValue {
  kind?: string;
  nullValue?: string | number;
  numberValue?: number;
  stringValue?: string;
  boolValue?: boolean;
  structValue?: PbStruct;
  listValue?: { values?: PbValue[] };
}
interface PbStruct {
  fields?: Record<string, PbValue>;
}
interface PbTimestamp {
  seconds: string | number;
  nanos: number;
}

export function toValue(data: unknown): PbValue {
  if (data === null || data === undefined) return { nullValue: "NULL_VALUE" };
  if (typeof data === "number") return { numberValue: data };
  if (typeof data === "string") return { stringValue: data };
  if (typeof data === "boolean") return { boolValue: data };
  if (Array.isArray(data)) return { listValue: { values: data.map(toValue) } };
  if (typeof data === "object") return { structValue: toStruct(data as Record<string, unknown>) };
  throw new TypeError(`not a JSON value: ${typeof data}`);
}

function toStruct(data: Record<string, unknown>): PbStruct {
  const fields: Record<string, PbValue> = {};
  for (const [key, item] of Object.entries(data)) fields[key] = toValue(item);
  return { fields };
}

export function fromValue(value: PbValue | null | undefined): Json {
  switch (value?.kind) {
    case "numberValue":
      return value.numberValue ?? 0;
    case "stringValue":
      return value.stringValue ?? "";
    case "boolValue":
      return value.boolValue ?? false;
    case "structValue":
      return fromStruct(value.structValue);
    case "listValue":
      return (value.listValue?.values ?? []).map(fromValue);
    default:
      return null;
  }
}

function fromStruct(struct: PbStruct | null | undefined): Record<string, Json> {
  const data: Record<string, Json> = {};
  for (const [key, item] of Object.entries(struct?.fields ?? {})) data[key] = fromValue(item);
  return data;
}

function toTimestamp(iso: string): PbTimestamp {
  const millis = Date.parse(iso);
  if (Number.isNaN(millis)) throw new TypeError(`not an ISO 8601 time: ${iso}`);
  return { seconds: Math.floor(millis / 1000), nanos: (millis % 1000) * 1e6 };
}

function fromTimestamp(stamp: PbTimestamp | null | undefined): string | undefined {
  if (!stamp) return undefined;
  const millis = Number(stamp.seconds) * 1000 + Math.floor(stamp.nanos / 1e6);
  return new Date(millis).toISOString();
}

// -- the client -----------------------------------------------------------------------------

const STATUS_PREFIX = "WORKFLOW_STATUS_";
// A Run answered UNAVAILABLE is tried this many times in all, waiting 50, 100, 200 ms between.
const RUN_ATTEMPTS = 4;
const RUN_BACKOFF_MS = 50;

type RawMessage = any;
type Unary = (
  request: object,
  metadata: grpc.Metadata,
  options: grpc.CallOptions,
  callback: (error: grpc.ServiceError | null, response?: RawMessage) => void,
) => void;

function findProtoDir(start: string): string {
  for (let dir = start; ; dir = path.dirname(dir)) {
    const candidate = path.join(dir, "protos");
    if (fs.existsSync(path.join(candidate, "okra", "workflow", "v1", "workflow.proto"))) {
      return candidate;
    }
    if (path.dirname(dir) === dir) {
      throw new Error(`no protos/okra/workflow/v1/workflow.proto above ${start}; pass protoDir`);
    }
  }
}

function fieldViolations(error: grpc.ServiceError): string[] {
  // The rich status travels as google.rpc.Status in this binary trailer; only BadRequest's
  // field paths are read here, with a minimal decoder to keep the client dependency-free.
  const raw = error.metadata?.get("grpc-status-details-bin")?.[0];
  if (!Buffer.isBuffer(raw)) return [];
  const fields: string[] = [];
  for (const detail of readFields(raw).filter((f) => f.number === 3)) {
    const parts = readFields(detail.bytes);
    const typeUrl = parts.find((p) => p.number === 1)?.bytes.toString() ?? "";
    if (!typeUrl.endsWith("google.rpc.BadRequest")) continue;
    const body = parts.find((p) => p.number === 2)?.bytes ?? Buffer.alloc(0);
    for (const violation of readFields(body).filter((f) => f.number === 1)) {
      const name = readFields(violation.bytes).find((f) => f.number === 1);
      if (name) fields.push(name.bytes.toString());
    }
  }
  return fields;
}

function readFields(buffer: Buffer): { number: number; bytes: Buffer }[] {
  const found: { number: number; bytes: Buffer }[] = [];
  let offset = 0;
  const varint = (): number => {
    let result = 0;
    let shift = 0;
    for (;;) {
      const byte = buffer[offset++];
      result += (byte & 0x7f) * 2 ** shift;
      if (byte < 0x80) return result;
      shift += 7;
    }
  };
  while (offset < buffer.length) {
    const key = varint();
    const wire = key % 8;
    if (wire === 2) {
      const length = varint();
      found.push({ number: Math.floor(key / 8), bytes: buffer.subarray(offset, offset + length) });
      offset += length;
    } else if (wire === 0) {
      varint();
    } else {
      offset += wire === 1 ? 8 : 4;
    }
  }
  return found;
}

export class OkraClient {
  private readonly stub: grpc.Client & Record<string, Unary>;
  private readonly timeoutMs: number;

  constructor(address: string, options: ClientOptions = {}) {
    const protoDir = options.protoDir ?? findProtoDir(__dirname);
    const definition = protoLoader.loadSync("okra/workflow/v1/workflow.proto", {
      includeDirs: [protoDir],
      keepCase: false,
      longs: String,
      enums: String,
      defaults: false,
      oneofs: true,
    });
    const loaded = grpc.loadPackageDefinition(definition) as RawMessage;
    const Service = loaded.okra.workflow.v1.WorkflowHostAPI as grpc.ServiceClientConstructor;
    const secure = options.tls ? tlsCredentials(options.tls) : undefined;
    this.stub = new Service(
      address,
      options.credentials ?? secure?.credentials ?? grpc.credentials.createInsecure(),
      secure?.options ?? {},
    ) as grpc.Client & Record<string, Unary>;
    this.timeoutMs = options.timeoutMs ?? 10_000;
  }

  close(): void {
    this.stub.close();
  }

  private call(method: string, request: object): Promise<RawMessage> {
    const deadline = new Date(Date.now() + this.timeoutMs);
    return new Promise((resolve, reject) => {
      this.stub[method].call(this.stub, request, new grpc.Metadata(), { deadline }, (error, response) => {
        if (error) reject(new OkraError(error.code, error.details, fieldViolations(error)));
        else resolve(response);
      });
    });
  }

  /**
   * Start an instance; resolves to its id once it is persisted, before any task runs. Retried
   * on UNAVAILABLE with the same `requestId`, which the sidecar de-duplicates.
   */
  async run(workflow: WorkflowInput): Promise<string> {
    const request = {
      workflowId: workflow.workflowId,
      input: toValue(workflow.input),
      correlationId: workflow.correlationId ?? "",
      tags: workflow.tags ?? {},
      requestId: workflow.requestId ?? randomUUID(),
    };
    const giveUpAt = Date.now() + this.timeoutMs;
    for (let attempt = 1; ; attempt++) {
      try {
        const response = await this.call("Run", request);
        return response.instanceId;
      } catch (error) {
        const backoffMs = RUN_BACKOFF_MS * 2 ** (attempt - 1);
        const retryable = error instanceof OkraError && error.code === grpc.status.UNAVAILABLE;
        if (!retryable || attempt >= RUN_ATTEMPTS || Date.now() + backoffMs >= giveUpAt) {
          throw error;
        }
        await new Promise((resolve) => setTimeout(resolve, backoffMs));
      }
    }
  }

  async signal(signal: SignalInput): Promise<void> {
    await this.call("Signal", {
      instanceId: signal.instanceId,
      signal: signal.signal,
      payload: toValue(signal.payload),
      signalId: signal.signalId ?? "",
    });
  }

  async getStatus(instanceId: string): Promise<WorkflowInstance> {
    return toInstance(await this.call("GetStatus", { instanceId }));
  }

  async query(options: QueryOptions = {}): Promise<QueryResult> {
    const request: Record<string, unknown> = {
      workflowId: options.workflowId ?? "",
      status: (options.status ?? []).map((s) => STATUS_PREFIX + s.toUpperCase()),
      tags: options.tags ?? {},
      correlationId: options.correlationId ?? "",
      limit: options.limit ?? 0,
      cursor: options.cursor ?? "",
    };
    if (options.startedAfter) request.startedAfter = toTimestamp(options.startedAfter);
    if (options.startedBefore) request.startedBefore = toTimestamp(options.startedBefore);
    const response = await this.call("Query", request);
    const instances = (response.instances ?? []).map(toInstance);
    return response.cursor ? { instances, cursor: response.cursor } : { instances };
  }

  /** Every instance matching `options`, page after page. */
  async *queryAll(options: Omit<QueryOptions, "cursor"> = {}): AsyncGenerator<WorkflowInstance> {
    let cursor: string | undefined;
    do {
      const page = await this.query({ ...options, cursor });
      yield* page.instances;
      cursor = page.cursor;
    } while (cursor);
  }

  async cancel(instanceId: string, reason?: string): Promise<void> {
    await this.call("Cancel", { instanceId, reason: reason ?? "" });
  }

  async listWorkflows(): Promise<WorkflowInfo[]> {
    const response = await this.call("ListWorkflows", {});
    return (response.workflows ?? []).map((w: RawMessage) => ({
      workflowId: w.workflowId ?? "",
      version: w.version ?? "",
      triggers: w.triggers ?? [],
      namespace: w.namespace ?? "",
      name: w.name ?? "",
      title: w.title ?? "",
      summary: w.summary ?? "",
    }));
  }
}

function toInstance(m: RawMessage): WorkflowInstance {
  const instance: WorkflowInstance = {
    instanceId: m.instanceId ?? "",
    workflowId: m.workflowId ?? "",
    version: m.version ?? "",
    status: String(m.status ?? "").replace(STATUS_PREFIX, "").toLowerCase() as WorkflowStatus,
    startTime: fromTimestamp(m.startTime) ?? "",
    input: fromValue(m.input),
    variables: fromStruct(m.variables),
    tags: m.tags ?? {},
  };
  if (m.currentStep) instance.currentStep = m.currentStep;
  if (m.endTime) instance.endTime = fromTimestamp(m.endTime);
  if (m.updatedAt) instance.updatedAt = fromTimestamp(m.updatedAt);
  if (m.output) instance.output = fromValue(m.output);
  if (m.error) {
    instance.problem = {
      type: m.error.type ?? "",
      status: m.error.status ?? 0,
      title: m.error.title ?? "",
      detail: m.error.detail ?? "",
      instance: m.error.instance ?? "",
    };
    instance.error = instance.problem.detail || instance.problem.title;
  }
  if (m.correlationId) instance.correlationId = m.correlationId;
  if (m.cancelReason) instance.cancelReason = m.cancelReason;
  return instance;
}
