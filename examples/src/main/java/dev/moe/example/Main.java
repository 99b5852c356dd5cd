package dev.moe.example;

import dev.moe.runtime.train.Session;
import java.nio.file.Path;
import java.util.Arrays;

/** Trains the model of tiny.moe for a few steps, then samples from it. */
public final class Main {
    public static void main(String[] args) throws Exception {
        int steps = args.length > 0 ? Integer.parseInt(args[0]) : 30;
        Session model = Session.create(TinyMoe::new, Session.Settings.defaults().batch(8).lr(3e-3));
        var losses = model.train(steps);
        System.out.printf("trained %s: loss %.3f -> %.3f over %d steps%n", model.model().name(), losses.getFirst(), losses.getLast(), steps);
        System.out.printf("held-out loss %.3f; expert loads %s%n", model.evaluate(4), Arrays.deepToString(model.expertLoads()));
        System.out.println("generated: " + model.generate("12+7=", 12).replace('\n', ' '));
        model.save(Path.of("target/tiny.safetensors"));
    }
}
