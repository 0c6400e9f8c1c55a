/**
 * The ScheduleHostAPI for Node.js (`OkraClient.schedules`): create cron schedules, read, page
 * through, pause, resume and delete them. The same verbs as the Python client's
 * `OkraClient.schedules`, JSON in and out, times as ISO 8601 strings.
 *
 * Reads, pause and resume are retried (as idempotent calls), and `trigger` with a `requestId`
 * (the sidecar de-duplicates it); delete is not: a second one finds nothing.
 */
import type { Json } from "./client";
import type { RawMessage, ServiceCall } from "./rpc";

export type OverlapPolicy = "allow" | "skip" | "buffer_one";
export type CatchUpPolicy = "skip_missed" | "fire_once";
/** Who owns a schedule: `trigger` ("api") or a definition's `schedule` ("definition"). */
export type ScheduleSource = "api" | "definition";

export interface TriggerOptions {
  workflowId: string;
  input: unknown;
  /** Five-field cron, e.g. "0 9 * * 1-5". */
  cronExpression: string;
  /** IANA zone the cron expression is read in; UTC when omitted. */
  timeZone?: string;
  startTime?: string;
  endTime?: string;
  overlap?: OverlapPolicy;
  catchUp?: CatchUpPolicy;
  tags?: Record<string, string>;
  /** Idempotency key: a repeated trigger with it returns the first schedule's id. */
  requestId?: string;
}

export interface Schedule {
  scheduleId: string;
  workflowId: string;
  input: Json;
  cronExpression: string;
  timeZone: string;
  startTime?: string;
  endTime?: string;
  overlap: OverlapPolicy;
  catchUp: CatchUpPolicy;
  tags: Record<string, string>;
  source: ScheduleSource;
  paused: boolean;
  /** The coming fire times, soonest first; empty when paused or ended. */
  nextFireTimes: string[];
  lastFireTime?: string;
  lastInstanceId?: string;
  firedCount: number;
  skippedCount: number;
  lastError?: string;
  /** For `every` and `after` schedules of a definition: the interval, in seconds. */
  everySeconds?: number;
  afterSeconds?: number;
  definitionVersion?: string;
  createTime?: string;
  updateTime?: string;
}

export interface ScheduleCodecs {
  toValue(data: unknown): object;
  fromValue(value: RawMessage): Json;
  toTimestamp(iso: string): object;
  fromTimestamp(stamp: RawMessage): string | undefined;
}

const OVERLAP_PREFIX = "OVERLAP_POLICY_";
const CATCH_UP_PREFIX = "CATCH_UP_POLICY_";
const SOURCE_PREFIX = "SCHEDULE_SOURCE_";

export class ScheduleClient {
  constructor(
    private readonly call: ServiceCall,
    private readonly codecs: ScheduleCodecs,
  ) {}

  /** Create a cron schedule that runs `workflowId` with `input`; resolves to its id. */
  async trigger(options: TriggerOptions): Promise<string> {
    const request: Record<string, unknown> = {
      workflowId: options.workflowId,
      input: this.codecs.toValue(options.input),
      cronExpression: options.cronExpression,
      timeZone: options.timeZone ?? "",
      overlapPolicy: OVERLAP_PREFIX + (options.overlap ?? "unspecified").toUpperCase(),
      catchUpPolicy: CATCH_UP_PREFIX + (options.catchUp ?? "unspecified").toUpperCase(),
      tags: options.tags ?? {},
      requestId: options.requestId ?? "",
    };
    if (options.startTime) request.startTime = this.codecs.toTimestamp(options.startTime);
    if (options.endTime) request.endTime = this.codecs.toTimestamp(options.endTime);
    const response = await this.call("TriggerWorkflow", request, Boolean(options.requestId));
    return response.scheduleId ?? "";
  }

  /** One schedule, with its next `nextFireCount` fire times (the sidecar's default: 5). */
  async get(scheduleId: string, options: { nextFireCount?: number } = {}): Promise<Schedule> {
    const request = { scheduleId, nextFireCount: options.nextFireCount ?? 0 };
    const response = await this.call("GetSchedule", request, true);
    return this.toSchedule(response.schedule ?? {});
  }

  /** Every schedule (of `workflowId` if given), ordered by id, page after page. */
  async *list(
    options: { workflowId?: string; pageSize?: number; nextFireCount?: number } = {},
  ): AsyncGenerator<Schedule> {
    let cursor = "";
    do {
      const response = await this.call(
        "ListSchedules",
        {
          workflowId: options.workflowId ?? "",
          limit: options.pageSize ?? 0,
          cursor,
          nextFireCount: options.nextFireCount ?? 0,
        },
        true,
      );
      for (const message of response.schedules ?? []) yield this.toSchedule(message);
      cursor = response.cursor ?? "";
    } while (cursor);
  }

  /** Stop firing until `resume`; pausing a paused schedule changes nothing. */
  async pause(scheduleId: string): Promise<Schedule> {
    const response = await this.call("PauseSchedule", { scheduleId }, true);
    return this.toSchedule(response.schedule ?? {});
  }

  /** Fire again from the next fire time on. */
  async resume(scheduleId: string): Promise<Schedule> {
    const response = await this.call("ResumeSchedule", { scheduleId }, true);
    return this.toSchedule(response.schedule ?? {});
  }

  /** Remove a schedule created by `trigger` (a definition's cannot be deleted: pause it). */
  async delete(scheduleId: string): Promise<void> {
    await this.call("DeleteSchedule", { scheduleId }, false);
  }

  private toSchedule(m: RawMessage): Schedule {
    const { fromTimestamp } = this.codecs;
    const lower = (value: unknown, prefix: string): string =>
      String(value ?? "").replace(prefix, "").toLowerCase();
    const schedule: Schedule = {
      scheduleId: m.scheduleId ?? "",
      workflowId: m.workflowId ?? "",
      input: this.codecs.fromValue(m.input),
      cronExpression: m.cronExpression ?? "",
      timeZone: m.timeZone ?? "",
      overlap: lower(m.overlapPolicy, OVERLAP_PREFIX) as OverlapPolicy,
      catchUp: lower(m.catchUpPolicy, CATCH_UP_PREFIX) as CatchUpPolicy,
      tags: m.tags ?? {},
      source: lower(m.source, SOURCE_PREFIX) as ScheduleSource,
      paused: Boolean(m.paused),
      nextFireTimes: (m.nextFireTimes ?? []).map((t: RawMessage) => fromTimestamp(t) ?? ""),
      firedCount: Number(m.firedCount ?? 0),
      skippedCount: Number(m.skippedCount ?? 0),
    };
    const times = ["startTime", "endTime", "lastFireTime", "createTime", "updateTime"] as const;
    for (const key of times) {
      const value = fromTimestamp(m[key]);
      if (value) schedule[key] = value;
    }
    if (m.lastInstanceId) schedule.lastInstanceId = m.lastInstanceId;
    if (m.lastError) schedule.lastError = m.lastError;
    if (m.definitionVersion) schedule.definitionVersion = m.definitionVersion;
    if (m.every) schedule.everySeconds = seconds(m.every);
    if (m.after) schedule.afterSeconds = seconds(m.after);
    return schedule;
  }
}

function seconds(duration: { seconds?: string | number; nanos?: number }): number {
  return Number(duration.seconds ?? 0) + (duration.nanos ?? 0) / 1e9;
}
