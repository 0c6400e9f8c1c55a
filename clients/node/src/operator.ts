/**
 * The WorkflowOperatorAPI for Node.js (`OkraClient.operator`): suspend, resume, retry, reset
 * and delete instances, and bulk operations over the instances a Query filter matches. The
 * same verbs as the Python client's `OkraClient.operator`, JSON in and out.
 *
 * Only Delete, GetBulkOperation and ListBulkOperations are retried (as idempotent calls): a
 * second Suspend, Resume, Retry, Reset or StartBulkOperation could act twice.
 */
import type { FilterOptions, WorkflowStatus } from "./client";
import type { RawMessage, ServiceCall } from "./rpc";

/** What a bulk operation does to each instance. */
export type BulkAction = "cancel" | "suspend" | "resume" | "retry" | "delete" | "signal";
export type BulkState = "running" | "completed" | "cancelled";

export interface BulkStartOptions extends FilterOptions {
  action: BulkAction;
  reason?: string;
  /** For `signal`: the signal's name and payload. */
  signal?: string;
  payload?: unknown;
  /**
   * Only count the matching instances and show up to ten; change nothing. Answers even when
   * more match than a real run may act on (`maxInstances`).
   */
  dryRun?: boolean;
  /** At most this many instances a second (0: as fast as it goes). */
  maxPerSecond?: number;
}

export interface BulkStart {
  /** "" for a dry run. */
  operationId: string;
  matched: number;
  sampleInstanceIds: string[];
  /**
   * The most instances a real run may act on (policy.workflow.bulk.maxInstances, or the
   * sidecar's default); a real run over it is refused. 0 from a sidecar that does not say.
   */
  maxInstances: number;
}

export interface BulkOperation {
  operationId: string;
  action: BulkAction;
  state: BulkState;
  matched: number;
  done: number;
  skipped: number;
  failed: number;
  /** Why instances were skipped or failed, with how many for each reason. */
  reasons: Record<string, number>;
  reason: string;
  createdAt?: string;
  updatedAt?: string;
}

export interface OperatorCodecs {
  toValue(data: unknown): object;
  toFilters(options: FilterOptions): Record<string, unknown>;
  fromStatus(status: string): WorkflowStatus;
  fromTimestamp(stamp: RawMessage): string | undefined;
}

const ACTION_PREFIX = "BULK_ACTION_";
const STATE_PREFIX = "BULK_OPERATION_STATE_";

export class OperatorClient {
  constructor(
    private readonly call: ServiceCall,
    private readonly codecs: OperatorCodecs,
  ) {}

  /** Pause a pending, running or waiting instance: it starts no task until resumed. */
  async suspend(instanceId: string, reason = ""): Promise<void> {
    await this.call("Suspend", { instanceId, reason }, false);
  }

  /** Let a suspended instance carry on where it stopped. */
  async resume(instanceId: string, reason = ""): Promise<void> {
    await this.call("Resume", { instanceId, reason }, false);
  }

  /**
   * Run a failed instance again from the task that failed it, with `$context` entries in
   * `variables` set first; resolves to that task's JSON pointer.
   */
  async retry(
    instanceId: string,
    options: { reason?: string; variables?: Record<string, unknown> } = {},
  ): Promise<string> {
    const request: Record<string, unknown> = { instanceId, reason: options.reason ?? "" };
    if (options.variables) {
      const fields: Record<string, object> = {};
      for (const [key, item] of Object.entries(options.variables)) {
        fields[key] = this.codecs.toValue(item);
      }
      request.variables = { fields };
    }
    const response = await this.call("Retry", request, false);
    return response.task ?? "";
  }

  /**
   * Take a completed, failed, cancelled or waiting instance back to the top-level `task` (a
   * JSON pointer such as `/do/1/charge`) with the data and `$context` it first reached it with,
   * and run it on from there; resolves to the status it had. Nothing it did since is undone.
   */
  async reset(instanceId: string, task: string, reason = ""): Promise<WorkflowStatus> {
    const response = await this.call("Reset", { instanceId, task, reason }, false);
    return this.codecs.fromStatus(String(response.previousStatus ?? ""));
  }

  /** Remove a completed, failed or cancelled instance with its history. */
  async delete(instanceId: string): Promise<void> {
    // A second Delete finds nothing (NOT_FOUND): never a double.
    await this.call("Delete", { instanceId }, true);
  }

  /** Apply one action to every instance the filters match (or only count them: `dryRun`). */
  async startBulk(options: BulkStartOptions): Promise<BulkStart> {
    const request: Record<string, unknown> = {
      filter: this.codecs.toFilters(options),
      action: ACTION_PREFIX + options.action.toUpperCase(),
      reason: options.reason ?? "",
      signal: options.signal ?? "",
      dryRun: options.dryRun ?? false,
      maxPerSecond: options.maxPerSecond ?? 0,
    };
    if (options.payload !== undefined) request.payload = this.codecs.toValue(options.payload);
    const response = await this.call("StartBulkOperation", request, false);
    return {
      operationId: response.operationId ?? "",
      matched: Number(response.matched ?? 0),
      sampleInstanceIds: response.sampleInstanceIds ?? [],
      maxInstances: Number(response.maxInstances ?? 0),
    };
  }

  async getBulk(operationId: string): Promise<BulkOperation> {
    const response = await this.call("GetBulkOperation", { operationId }, true);
    return this.toBulk(response.operation ?? {});
  }

  /** Stop a running bulk operation; what it did stays done. */
  async cancelBulk(operationId: string): Promise<void> {
    await this.call("CancelBulkOperation", { operationId }, false);
  }

  /** The most recent bulk operations, newest first. */
  async listBulk(): Promise<BulkOperation[]> {
    const response = await this.call("ListBulkOperations", {}, true);
    return (response.operations ?? []).map((m: RawMessage) => this.toBulk(m));
  }

  private toBulk(m: RawMessage): BulkOperation {
    const reasons: Record<string, number> = {};
    for (const [why, count] of Object.entries(m.reasons ?? {})) reasons[why] = Number(count);
    const operation: BulkOperation = {
      operationId: m.operationId ?? "",
      action: String(m.action ?? "").replace(ACTION_PREFIX, "").toLowerCase() as BulkAction,
      state: String(m.state ?? "").replace(STATE_PREFIX, "").toLowerCase() as BulkState,
      matched: Number(m.matched ?? 0),
      done: Number(m.done ?? 0),
      skipped: Number(m.skipped ?? 0),
      failed: Number(m.failed ?? 0),
      reasons,
      reason: m.reason ?? "",
    };
    const created = this.codecs.fromTimestamp(m.createdAt);
    const updated = this.codecs.fromTimestamp(m.updatedAt);
    if (created) operation.createdAt = created;
    if (updated) operation.updatedAt = updated;
    return operation;
  }
}
