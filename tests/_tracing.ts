/**
 * A tracer provider that keeps every span in memory, so tests can read what
 * the stores report through `@opentelemetry/api`.
 */
import {
  type Attributes,
  type AttributeValue,
  type Exception,
  type Span,
  type SpanContext,
  type SpanOptions,
  type SpanStatus,
  SpanStatusCode,
  type TimeInput,
  trace,
  type Tracer,
  type TracerProvider,
} from "@opentelemetry/api";

/** A finished or running span as the test sees it. */
export class RecordedSpan implements Span {
  readonly attributes: Attributes;
  status: SpanStatus = { code: SpanStatusCode.UNSET };
  readonly exceptions: Exception[] = [];
  ended = false;

  constructor(public name: string, options: SpanOptions = {}) {
    this.attributes = { ...options.attributes };
  }

  spanContext(): SpanContext {
    return {
      traceId: "0".repeat(31) + "1",
      spanId: "0".repeat(15) + "1",
      traceFlags: 1,
    };
  }
  setAttribute(key: string, value: AttributeValue): this {
    this.attributes[key] = value;
    return this;
  }
  setAttributes(attributes: Attributes): this {
    Object.assign(this.attributes, attributes);
    return this;
  }
  addEvent(): this {
    return this;
  }
  addLink(): this {
    return this;
  }
  addLinks(): this {
    return this;
  }
  setStatus(status: SpanStatus): this {
    this.status = status;
    return this;
  }
  updateName(name: string): this {
    this.name = name;
    return this;
  }
  end(_endTime?: TimeInput): void {
    this.ended = true;
  }
  isRecording(): boolean {
    return !this.ended;
  }
  recordException(exception: Exception): void {
    this.exceptions.push(exception);
  }
}

/** Registers a global tracer provider that records spans; returns them. */
export function recordSpans(): RecordedSpan[] {
  const spans: RecordedSpan[] = [];
  const tracer = {
    startSpan(name: string, options?: SpanOptions): Span {
      const span = new RecordedSpan(name, options);
      spans.push(span);
      return span;
    },
    startActiveSpan(): never {
      throw new Error("startActiveSpan is not recorded by this test tracer");
    },
  } as unknown as Tracer;
  const provider: TracerProvider = { getTracer: () => tracer };
  if (!trace.setGlobalTracerProvider(provider)) {
    throw new Error("a global tracer provider was already registered");
  }
  return spans;
}
