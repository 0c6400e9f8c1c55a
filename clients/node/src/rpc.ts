/** What OkraClient lends the clients of its other services (operator, schedules). */

// A reply as @grpc/proto-loader decodes it: plain objects the callers read field by field.
export type RawMessage = any;

/** OkraClient's call: one rpc of the named service within the client's deadline. */
export type ServiceCall = (method: string, request: object, idempotent: boolean) => Promise<RawMessage>;
