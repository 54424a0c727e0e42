/** Events shaped like a real application's, shared by the benchmarks. */
import type { NewEvent } from "../mod.ts";

/** A small order event: a few strings and integers, with metadata. */
export function orderEvent(index: number): NewEvent {
  return {
    type: "ItemAdded.v1",
    data: {
      orderId: "order-3f9c2e",
      sku: `SKU-${index % 1000}`,
      quantity: 1 + (index % 5),
      priceCents: 499 + index,
      addedAt: new Date(1_764_000_000_000 + index),
    },
    metadata: {
      correlationId: "6f1c2d4e-8a4b-4c1e-9f7d-2b3a4c5d6e7f",
      userId: "u-42",
    },
  };
}

/** `count` order events. */
export function orderEvents(count: number): NewEvent[] {
  return Array.from({ length: count }, (_, index) => orderEvent(index));
}
