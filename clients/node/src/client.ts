/**
 * Node.js client of the okra sidecar's WorkflowHostAPI, with the seed interface's method names
 * (run, signal, getStatus, query, cancel, listWorkflows), and of its WorkflowOperatorAPI
 * (`client.operator`, operator.ts). JSON in and out: `input`, `output`,
 * `payload` and `variables` are plain JavaScript values, times are ISO 8601 strings.
 *
 * The proto is loaded at run time with @grpc/proto-loader from the nearest protos/ folder
 * above this file: the package's own (`npm pack` puts a copy inside) or the repository's. Pass
 * `protoDir` to name another. There is no generated code to keep in step.
 *
 * A failed call rejects with an OkraError carrying the google.rpc details the sidecar sends
 * (docs/errors.md): the ErrorInfo reason and metadata, field violations, precondition
 * violations and the retry delay. Idempotent calls are retried when the reason says a retry
 * can succeed.
 */
import { randomUUID } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

import { OperatorClient } from "./operator";
import type { RawMessage } from "./rpc";
import { ScheduleClient } from "./schedules";

export * from "./operator";
export * from "./schedules";

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
  /** Grows with every change the sidecar commits (an int64, as a decimal string). */
  revision: string;
}

/** A Run and a Signal for the instance the Run's `requestId` names (required here). */
export interface SignalWithStartInput extends WorkflowInput {
  requestId: string;
  signal: string;
  payload?: unknown;
  signalId?: string;
}

export interface SignalWithStartResult {
  instanceId: string;
  /** True when this call created the instance. */
  started: boolean;
  signalId: string;
  duplicate: boolean;
}

export interface AwaitOptions {
  /** Return once the status is one of these; every final status when omitted. */
  statuses?: WorkflowStatus[];
  /** Also return once the instance's revision is not this one. */
  revision?: string;
  /** The call's deadline (the client's `timeoutMs` when omitted). */
  timeoutMs?: number;
}

export interface WaitOptions {
  /** The statuses to wait for; every final status when omitted. */
  until?: WorkflowStatus[];
  /** Give up (rejecting with a TimeoutError) after this long; 30 s when omitted. */
  timeoutMs?: number;
}

export const FINAL_STATUSES: readonly WorkflowStatus[] = ["completed", "failed", "cancelled"];
// wait() makes AwaitInstance calls of at most this long, each answered when the instance
// changes; it never polls GetStatus.
const AWAIT_CALL_MS = 30_000;
const MIN_AWAIT_MS = 100;

/** Query's filters, which Count takes too. */
export interface FilterOptions {
  workflowId?: string;
  status?: WorkflowStatus[];
  tags?: Record<string, string>;
  correlationId?: string;
  startedAfter?: string;
  startedBefore?: string;
}

export interface QueryOptions extends FilterOptions {
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

/** How idempotent calls are retried: exponential backoff with full jitter. */
export interface RetryOptions {
  /** Attempts in all, the first included (default 4; 1 never retries). */
  maxAttempts?: number;
  initialBackoffMs?: number;
  maxBackoffMs?: number;
}

export interface ClientOptions {
  /** Folder holding okra/workflow/v1/workflow.proto; found above this file when omitted. */
  protoDir?: string;
  /** Deadline of each call in milliseconds, retries included (default 10 000). */
  timeoutMs?: number;
  /** Dial with TLS; plaintext when neither this nor `credentials` is given. */
  tls?: TlsOptions;
  credentials?: grpc.ChannelCredentials;
  retry?: RetryOptions;
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


/** google.rpc.ErrorInfo.domain of the sidecar's errors. */
export const ERROR_DOMAIN = "okra.dev";

/**
 * The reasons after which the same call can succeed (docs/errors.md, "Retry" column);
 * tests/clients/test_node_client.py checks this list against the sidecar's.
 */
export const RETRYABLE_REASONS: ReadonlySet<string> = new Set([
  "CHANGED_CONCURRENTLY",
  "RATE_LIMITED",
  "REDIS_UNAVAILABLE",
  "REPLICAS_NOT_ACKNOWLEDGED",
]);

/** A google.rpc.BadRequest field violation: which request field is wrong and why. */
export interface FieldViolation {
  field: string;
  description: string;
}

/** A google.rpc.PreconditionFailure violation: what must hold for the call to make sense. */
export interface PreconditionViolation {
  type: string;
  subject: string;
  description: string;
}

/** The google.rpc details of a failed call. */
export interface ErrorDetails {
  reason: string;
  domain: string;
  metadata: Record<string, string>;
  fieldViolations: FieldViolation[];
  preconditionViolations: PreconditionViolation[];
  retryDelayMs?: number;
}

/**
 * A failed call: the gRPC status code and message, and the details. `reason` (e.g.
 * INSTANCE_NOT_FOUND) and `metadata` (instance, workflow, schedule, policy, ...) come from the
 * ErrorInfo; "" and {} when the call failed before reaching the sidecar.
 */
export class OkraError extends Error {
  readonly reason: string;
  readonly domain: string;
  readonly metadata: Record<string, string>;
  readonly fieldViolations: FieldViolation[];
  readonly preconditionViolations: PreconditionViolation[];
  readonly retryDelayMs?: number;

  constructor(
    readonly code: grpc.status,
    readonly details: string,
    rich: ErrorDetails = emptyDetails(),
  ) {
    super(`${grpc.status[code]}: ${rich.reason ? `${rich.reason}: ` : ""}${details}`);
    this.name = "OkraError";
    this.reason = rich.reason;
    this.domain = rich.domain;
    this.metadata = rich.metadata;
    this.fieldViolations = rich.fieldViolations;
    this.preconditionViolations = rich.preconditionViolations;
    if (rich.retryDelayMs !== undefined) this.retryDelayMs = rich.retryDelayMs;
  }

  /** Whether the same call can succeed: by the sidecar's reason, else only UNAVAILABLE. */
  get retryable(): boolean {
    if (this.domain === ERROR_DOMAIN && this.reason) return RETRYABLE_REASONS.has(this.reason);
    return this.code === grpc.status.UNAVAILABLE;
  }
}

function emptyDetails(): ErrorDetails {
  return {
    reason: "",
    domain: "",
    metadata: {},
    fieldViolations: [],
    preconditionViolations: [],
  };
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
  // Both absent when zero: the proto loader runs with `defaults: false`.
  seconds?: string | number;
  nanos?: number;
}

/** `data` as google.protobuf.Value, as JSON.stringify would write it. */
export function toValue(data: unknown): PbValue {
  if (data === null || data === undefined) return { nullValue: "NULL_VALUE" };
  if (typeof data === "number") {
    // The sidecar would store NaN and Infinity as null, after checking them as numbers.
    if (!Number.isFinite(data)) {
      throw new TypeError(`not a JSON value: ${data} (JSON has no NaN or Infinity)`);
    }
    return { numberValue: data };
  }
  if (typeof data === "string") return { stringValue: data };
  if (typeof data === "boolean") return { boolValue: data };
  if (Array.isArray(data)) return { listValue: { values: data.map(toValue) } };
  if (typeof data === "object") {
    const { toJSON } = data as { toJSON?: unknown };
    if (typeof toJSON === "function") return toValue(toJSON.call(data)); // a Date: its ISO string
    return { structValue: toStruct(data as Record<string, unknown>) };
  }
  throw new TypeError(`not a JSON value: ${typeof data}`);
}

function toStruct(data: Record<string, unknown>): PbStruct {
  const fields: Record<string, PbValue> = {};
  // A property left undefined is absent, as in JSON.stringify (an optional field not given).
  for (const [key, item] of Object.entries(data)) if (item !== undefined) fields[key] = toValue(item);
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

export function fromTimestamp(stamp: PbTimestamp | null | undefined): string | undefined {
  if (!stamp) return undefined;
  // A time on a whole second has no `nanos` on the wire (one in a thousand of the sidecar's).
  const millis = Number(stamp.seconds ?? 0) * 1000 + Math.floor((stamp.nanos ?? 0) / 1e6);
  return new Date(millis).toISOString();
}

// -- the client -----------------------------------------------------------------------------

const STATUS_PREFIX = "WORKFLOW_STATUS_";
// The rpcs of okra.workflow.v1.WorkflowOperatorAPI (the others are WorkflowHostAPI's).
const OPERATOR_METHODS: ReadonlySet<string> = new Set([
  "Suspend",
  "Resume",
  "Retry",
  "Reset",
  "Delete",
  "StartBulkOperation",
  "GetBulkOperation",
  "CancelBulkOperation",
  "ListBulkOperations",
]);

// The rpcs of okra.schedule.v1.ScheduleHostAPI.
const SCHEDULE_METHODS: ReadonlySet<string> = new Set([
  "TriggerWorkflow",
  "ListSchedules",
  "GetSchedule",
  "PauseSchedule",
  "ResumeSchedule",
  "DeleteSchedule",
]);

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

type Field = { number: number; bytes: Buffer; value: number };

function text(fields: Field[], number: number): string {
  return fields.find((f) => f.number === number)?.bytes.toString() ?? "";
}

/**
 * The details of the google.rpc.Status the sidecar sends in the grpc-status-details-bin
 * trailer, read with a minimal protobuf decoder to keep the client dependency-free.
 */
export function errorDetails(error: grpc.ServiceError): ErrorDetails {
  const details = emptyDetails();
  const raw = error.metadata?.get("grpc-status-details-bin")?.[0];
  if (!Buffer.isBuffer(raw)) return details;
  for (const detail of readFields(raw).filter((f) => f.number === 3)) {
    const parts = readFields(detail.bytes);
    const typeUrl = text(parts, 1);
    const body = readFields(parts.find((p) => p.number === 2)?.bytes ?? Buffer.alloc(0));
    const type = typeUrl.slice(typeUrl.lastIndexOf("/") + 1);
    if (type === "google.rpc.ErrorInfo") {
      details.reason = text(body, 1);
      details.domain = text(body, 2);
      for (const entry of body.filter((f) => f.number === 3)) {
        const pair = readFields(entry.bytes);
        details.metadata[text(pair, 1)] = text(pair, 2);
      }
    } else if (type === "google.rpc.BadRequest") {
      for (const violation of body.filter((f) => f.number === 1)) {
        const v = readFields(violation.bytes);
        details.fieldViolations.push({ field: text(v, 1), description: text(v, 2) });
      }
    } else if (type === "google.rpc.PreconditionFailure") {
      for (const violation of body.filter((f) => f.number === 1)) {
        const v = readFields(violation.bytes);
        details.preconditionViolations.push({
          type: text(v, 1),
          subject: text(v, 2),
          description: text(v, 3),
        });
      }
    } else if (type === "google.rpc.RetryInfo") {
      const delay = readFields(body.find((f) => f.number === 1)?.bytes ?? Buffer.alloc(0));
      const seconds = delay.find((f) => f.number === 1)?.value ?? 0;
      const nanos = delay.find((f) => f.number === 2)?.value ?? 0;
      details.retryDelayMs = seconds * 1000 + nanos / 1e6;
    }
  }
  return details;
}

function readFields(buffer: Buffer): Field[] {
  const found: Field[] = [];
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
  const none = Buffer.alloc(0);
  while (offset < buffer.length) {
    const key = varint();
    const wire = key % 8;
    const number = Math.floor(key / 8);
    if (wire === 2) {
      const length = varint();
      found.push({ number, bytes: buffer.subarray(offset, offset + length), value: 0 });
      offset += length;
    } else if (wire === 0) {
      found.push({ number, bytes: none, value: varint() });
    } else {
      offset += wire === 1 ? 8 : 4;
    }
  }
  return found;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export class OkraClient {
  private readonly stub: grpc.Client & Record<string, Unary>;
  private readonly operatorStub: grpc.Client & Record<string, Unary>;
  private readonly scheduleStub: grpc.Client & Record<string, Unary>;
  /** The WorkflowOperatorAPI: suspend, resume, retry, reset, delete and bulk operations. */
  readonly operator: OperatorClient;
  /** The ScheduleHostAPI: trigger (create), get, list, pause, resume and delete schedules. */
  readonly schedules: ScheduleClient;
  private readonly timeoutMs: number;
  private readonly retry: Required<RetryOptions>;

  constructor(address: string, options: ClientOptions = {}) {
    const protoDir = options.protoDir ?? findProtoDir(__dirname);
    const files = [
      "okra/workflow/v1/workflow.proto",
      "okra/workflow/v1/operator.proto",
      "okra/schedule/v1/schedule.proto",
    ];
    const definition = protoLoader.loadSync(files, {
      includeDirs: [protoDir],
      keepCase: false,
      longs: String,
      enums: String,
      defaults: false,
      oneofs: true,
    });
    const loaded = grpc.loadPackageDefinition(definition) as RawMessage;
    const Service = loaded.okra.workflow.v1.WorkflowHostAPI as grpc.ServiceClientConstructor;
    const Operator = loaded.okra.workflow.v1.WorkflowOperatorAPI as grpc.ServiceClientConstructor;
    const Schedules = loaded.okra.schedule.v1.ScheduleHostAPI as grpc.ServiceClientConstructor;
    const secure = options.tls ? tlsCredentials(options.tls) : undefined;
    const credentials =
      options.credentials ?? secure?.credentials ?? grpc.credentials.createInsecure();
    this.stub = new Service(address, credentials, secure?.options ?? {}) as grpc.Client &
      Record<string, Unary>;
    // The same channel: grpc-js shares one connection between clients of equal arguments.
    this.operatorStub = new Operator(address, credentials, secure?.options ?? {}) as grpc.Client &
      Record<string, Unary>;
    this.scheduleStub = new Schedules(address, credentials, secure?.options ?? {}) as grpc.Client &
      Record<string, Unary>;
    this.schedules = new ScheduleClient(
      (method, request, idempotent) => this.call(method, request, idempotent),
      { toValue, fromValue, toTimestamp, fromTimestamp },
    );
    this.operator = new OperatorClient(
      (method, request, idempotent) => this.call(method, request, idempotent),
      {
        toValue,
        toFilters,
        fromStatus: (status) => status.replace(STATUS_PREFIX, "").toLowerCase() as WorkflowStatus,
        fromTimestamp,
      },
    );
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.retry = {
      maxAttempts: options.retry?.maxAttempts ?? 4,
      initialBackoffMs: options.retry?.initialBackoffMs ?? 100,
      maxBackoffMs: options.retry?.maxBackoffMs ?? 2_000,
    };
  }

  close(): void {
    this.stub.close();
    this.operatorStub.close();
    this.scheduleStub.close();
  }

  private attempt(method: string, request: object, deadline: Date): Promise<RawMessage> {
    const stub = OPERATOR_METHODS.has(method)
      ? this.operatorStub
      : SCHEDULE_METHODS.has(method)
        ? this.scheduleStub
        : this.stub;
    return new Promise((resolve, reject) => {
      stub[method].call(stub, request, new grpc.Metadata(), { deadline }, (error, response) => {
        if (error) reject(new OkraError(error.code, error.details, errorDetails(error)));
        else resolve(response);
      });
    });
  }

  /**
   * One call within one deadline. An idempotent call is retried while its error is
   * retryable, attempts remain and the retry can start before the deadline, after at least
   * the sidecar's RetryInfo delay.
   */
  private async call(
    method: string,
    request: object,
    idempotent = false,
    timeoutMs = this.timeoutMs,
  ): Promise<RawMessage> {
    const deadline = new Date(Date.now() + timeoutMs);
    const { maxAttempts, initialBackoffMs, maxBackoffMs } = this.retry;
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.attempt(method, request, deadline);
      } catch (error) {
        if (!(error instanceof OkraError) || !idempotent || !error.retryable) throw error;
        if (attempt >= maxAttempts) throw error;
        const ceiling = Math.min(maxBackoffMs, initialBackoffMs * 2 ** (attempt - 1));
        const delay = Math.max(error.retryDelayMs ?? 0, Math.random() * ceiling);
        if (Date.now() + delay >= deadline.getTime()) throw error;
        await sleep(delay);
      }
    }
  }

  /**
   * Start an instance; resolves to its id once it is persisted, before any task runs. Every
   * Run carries a `requestId` (a new UUID when omitted), which the sidecar de-duplicates, so
   * it is retried like the other idempotent calls: a Run answered UNAVAILABLE may already be
   * stored, and its retry gets the first instance back instead of starting a second.
   */
  async run(workflow: WorkflowInput): Promise<string> {
    const request = {
      workflowId: workflow.workflowId,
      input: toValue(workflow.input),
      correlationId: workflow.correlationId ?? "",
      tags: workflow.tags ?? {},
      requestId: workflow.requestId ?? randomUUID(),
    };
    const response = await this.call("Run", request, true);
    return response.instanceId;
  }

  async signal(signal: SignalInput): Promise<void> {
    await this.call("Signal", {
      instanceId: signal.instanceId,
      signal: signal.signal,
      payload: toValue(signal.payload),
      signalId: signal.signalId ?? "",
    }, Boolean(signal.signalId));
  }

  async getStatus(instanceId: string): Promise<WorkflowInstance> {
    return toInstance(await this.call("GetStatus", { instanceId }, true));
  }

  async query(options: QueryOptions = {}): Promise<QueryResult> {
    const request = {
      ...toFilters(options),
      limit: options.limit ?? 0,
      cursor: options.cursor ?? "",
    };
    const response = await this.call("Query", request, true);
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

  /** The exact number of instances matching every filter given (Query's filters). */
  async count(options: FilterOptions = {}): Promise<number> {
    const response = await this.call("Count", toFilters(options), true);
    return Number(response.count ?? 0);
  }

  /**
   * One AwaitInstance call: the instance once its status is in `statuses` (any final one by
   * default) or its revision is not `revision`; just before the deadline, as it is.
   */
  async awaitInstance(instanceId: string, options: AwaitOptions = {}): Promise<WorkflowInstance> {
    const request: Record<string, unknown> = {
      instanceId,
      statuses: (options.statuses ?? []).map(toStatus),
    };
    if (options.revision !== undefined) request.revision = options.revision;
    const response = await this.call("AwaitInstance", request, true, options.timeoutMs);
    return toInstance(response.instance ?? {});
  }

  /**
   * The instance once its status is in `until` (finished by default), through AwaitInstance
   * calls that the sidecar answers when the instance changes: nothing polls. The calls ask
   * for the final statuses too: a finished instance takes another status only if an operator
   * resets or retries it, so one found finished in a status not in `until` rejects at once
   * with StatusUnreachableError (the check reads the sidecar's answer, one snapshot: no race).
   */
  async wait(instanceId: string, options: WaitOptions = {}): Promise<WorkflowInstance> {
    const until = options.until ?? FINAL_STATUSES;
    const statuses = [...new Set([...until, ...FINAL_STATUSES])];
    const deadline = Date.now() + (options.timeoutMs ?? 30_000);
    for (;;) {
      const left = deadline - Date.now();
      if (left < MIN_AWAIT_MS) {
        const error = new Error(`instance ${instanceId} was not ${until.join(", ")} in time`);
        error.name = "TimeoutError";
        throw error;
      }
      const instance = await this.awaitInstance(instanceId, {
        statuses,
        timeoutMs: Math.min(AWAIT_CALL_MS, left),
      });
      if (until.includes(instance.status)) return instance;
      if (FINAL_STATUSES.includes(instance.status)) throw new StatusUnreachableError(instance, until);
    }
  }

  /**
   * WatchInstance: the instance now, then at each change, until it has finished. Without
   * `timeoutMs` the stream has no deadline; it is not retried.
   */
  async *watch(instanceId: string, options: { timeoutMs?: number } = {}): AsyncGenerator<WorkflowInstance> {
    const deadline = options.timeoutMs === undefined ? Infinity : Date.now() + options.timeoutMs;
    const stream = (this.stub as RawMessage).WatchInstance(
      { instanceId },
      new grpc.Metadata(),
      { deadline },
    ) as grpc.ClientReadableStream<RawMessage>;
    try {
      for await (const message of stream) yield toInstance(message.instance ?? {});
    } catch (error) {
      const failed = error as grpc.ServiceError;
      if (typeof failed.code === "number") {
        throw new OkraError(failed.code, failed.details, errorDetails(failed));
      }
      throw error;
    } finally {
      stream.cancel();
    }
  }

  /**
   * Start the instance `requestId` names unless it exists, then signal it, in one atomic
   * step. Retried only with a `signalId`, which keeps the signal from being delivered twice.
   */
  async signalWithStart(input: SignalWithStartInput): Promise<SignalWithStartResult> {
    const response = await this.call("SignalWithStart", {
      run: {
        workflowId: input.workflowId,
        input: toValue(input.input),
        correlationId: input.correlationId ?? "",
        tags: input.tags ?? {},
        requestId: input.requestId,
      },
      signal: input.signal,
      payload: toValue(input.payload),
      signalId: input.signalId ?? "",
    }, Boolean(input.signalId));
    return {
      instanceId: response.instanceId ?? "",
      started: Boolean(response.started),
      signalId: response.signalId ?? "",
      duplicate: Boolean(response.duplicate),
    };
  }

  /** Run, returning a handle on the instance. */
  async start(workflow: WorkflowInput): Promise<WorkflowHandle> {
    return new WorkflowHandle(this, await this.run(workflow));
  }

  /** A handle on an instance that exists (nothing is called until it is used). */
  getHandle(instanceId: string): WorkflowHandle {
    return new WorkflowHandle(this, instanceId);
  }

  async cancel(instanceId: string, reason?: string): Promise<void> {
    await this.call("Cancel", { instanceId, reason: reason ?? "" });
  }

  async listWorkflows(): Promise<WorkflowInfo[]> {
    const response = await this.call("ListWorkflows", {}, true);
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

/** `result()` of an instance that failed or was cancelled; `instance` has the details. */
export class WorkflowFailedError extends Error {
  constructor(readonly instance: WorkflowInstance) {
    super(
      instance.status === "cancelled"
        ? `instance ${instance.instanceId} was cancelled${instance.cancelReason ? `: ${instance.cancelReason}` : ""}`
        : `instance ${instance.instanceId} failed${instance.error ? `: ${instance.error}` : ""}`,
    );
    this.name = "WorkflowFailedError";
  }
}

/**
 * `wait({ until })` found the instance finished in a status not in `until`: only an operator's
 * Reset or Retry could give it another, so waiting on would only end at the deadline.
 * `instance` is the finished instance as the sidecar answered it.
 */
export class StatusUnreachableError extends Error {
  constructor(
    readonly instance: WorkflowInstance,
    readonly until: readonly WorkflowStatus[],
  ) {
    super(
      `instance ${instance.instanceId} is ${instance.status} and will not be ` +
        `${until.join(" or ")} unless an operator resets or retries it`,
    );
    this.name = "StatusUnreachableError";
  }
}

/** One instance and the verbs that act on it, in temporalio's style. */
export class WorkflowHandle {
  constructor(
    private readonly client: OkraClient,
    readonly id: string,
  ) {}

  describe(): Promise<WorkflowInstance> {
    return this.client.getStatus(this.id);
  }

  wait(options: WaitOptions = {}): Promise<WorkflowInstance> {
    return this.client.wait(this.id, options);
  }

  /** The output once completed; rejects with WorkflowFailedError if it failed or was cancelled. */
  async result(options: { timeoutMs?: number } = {}): Promise<Json | undefined> {
    const instance = await this.wait({ timeoutMs: options.timeoutMs });
    if (instance.status !== "completed") throw new WorkflowFailedError(instance);
    return instance.output;
  }

  watch(options: { timeoutMs?: number } = {}): AsyncGenerator<WorkflowInstance> {
    return this.client.watch(this.id, options);
  }

  signal(signal: string, payload?: unknown, signalId?: string): Promise<void> {
    return this.client.signal({ instanceId: this.id, signal, payload, signalId });
  }

  cancel(reason?: string): Promise<void> {
    return this.client.cancel(this.id, reason);
  }

  suspend(reason?: string): Promise<void> {
    return this.client.operator.suspend(this.id, reason);
  }

  resume(reason?: string): Promise<void> {
    return this.client.operator.resume(this.id, reason);
  }

  /** Back to the top-level `task`; resolves to the status it had. */
  reset(task: string, reason?: string): Promise<WorkflowStatus> {
    return this.client.operator.reset(this.id, task, reason);
  }
}

function toStatus(status: WorkflowStatus): string {
  return STATUS_PREFIX + status.toUpperCase();
}

function toFilters(options: FilterOptions): Record<string, unknown> {
  const request: Record<string, unknown> = {
    workflowId: options.workflowId ?? "",
    status: (options.status ?? []).map(toStatus),
    tags: options.tags ?? {},
    correlationId: options.correlationId ?? "",
  };
  if (options.startedAfter) request.startedAfter = toTimestamp(options.startedAfter);
  if (options.startedBefore) request.startedBefore = toTimestamp(options.startedBefore);
  return request;
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
    revision: String(m.revision ?? "0"),
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
