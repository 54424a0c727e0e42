/**
 * Copies of parsed JSON, for stores that keep a value `JSON.parse` made and
 * hand out copies of it instead of parsing its text again. Private to the
 * package.
 *
 * @module
 */

/**
 * A deep copy of a value `JSON.parse` made: what parsing its text again
 * would give, a fresh object, array and value for each (a `__proto__` key
 * stays an own property, as `JSON.parse` makes it).
 */
export function copyJson(value: unknown): unknown {
  if (typeof value !== "object" || value === null) return value;
  if (Array.isArray(value)) {
    const copy = new Array(value.length);
    for (let index = 0; index < value.length; index++) {
      copy[index] = copyJson(value[index]);
    }
    return copy;
  }
  const copy: Record<string, unknown> = {};
  // Own keys only, whatever an application added to Object.prototype.
  for (const key of Object.keys(value)) {
    const entry = copyJson((value as Record<string, unknown>)[key]);
    if (key === "__proto__") {
      Object.defineProperty(copy, key, {
        value: entry,
        configurable: true,
        enumerable: true,
        writable: true,
      });
    } else {
      copy[key] = entry;
    }
  }
  return copy;
}
